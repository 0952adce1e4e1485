"""Check an `mvlm.convert.to_hf` export under transformers 4.x (run with that environment's Python).

    bash scripts/test.sh -k transformers_4     # builds .venv-transformers4 on first use and points the test at it

    python scripts/check_hf_export_transformers4.py EXPORT_DIR EXPECTED.safetensors

EXPECTED holds `input_ids`, `pixel_values`, and mvlm's `logits` and greedy `tokens` for them. The export
must load with no missing or unexpected keys, its processor must load and prepare the same pixels, and
the logits (atol 1e-4) and tokens must be mvlm's. Imports nothing from mvlm: this runs where mvlm cannot.
"""

import sys

import torch
import transformers
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration


def main(export_dir: str, expected_path: str) -> None:
    expected = load_file(expected_path)
    model, info = LlavaForConditionalGeneration.from_pretrained(export_dir, output_loading_info=True)
    problems = {key: value for key, value in info.items() if value and key != "error_msgs"}
    if problems or info.get("error_msgs"):
        raise SystemExit(f"loading problems: {info}")
    model.eval()
    processor = AutoProcessor.from_pretrained(export_dir)
    if type(processor).__name__ != "LlavaProcessor":
        raise SystemExit(f"processor is {type(processor).__name__}")
    with torch.no_grad():
        logits = model(input_ids=expected["input_ids"], pixel_values=expected["pixel_values"]).logits
    difference = (logits - expected["logits"]).abs().max().item()
    if difference > 1e-4:
        raise SystemExit(f"logits differ by {difference}")
    tokens = model.generate(input_ids=expected["input_ids"], pixel_values=expected["pixel_values"],
                            max_new_tokens=expected["tokens"].shape[1], do_sample=False)
    if not torch.equal(tokens[:, expected["input_ids"].shape[1]:], expected["tokens"]):
        raise SystemExit(f"greedy tokens differ: {tokens.tolist()} vs {expected['tokens'].tolist()}")
    print(f"transformers {transformers.__version__}: loads, logits within {difference:.2e}, same greedy tokens")


if __name__ == "__main__":
    main(*sys.argv[1:])
