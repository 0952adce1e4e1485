"""Merge a LoRA checkpoint into its base model and save a plain mvlm checkpoint (LLaVA's
`scripts/merge_lora_weights.py`, same flags).

    python -m mvlm.convert.merge_lora --model-path LORA_CKPT --model-base BASE --save-model-path OUT

LORA_CKPT: an mvlm LoRA folder (adapters on the LLM and/or the tower, plus the non-LoRA trainables such
as the projector) or an XTuner folder with `llm_adapter/` / `visual_encoder_adapter/`. BASE: what the run
started from (the LLM, or an mvlm checkpoint). The merged weights give the logits of the unmerged model.
"""

from __future__ import annotations

import argparse
import os

from mvlm.convert.dtypes import DTYPES, checkpoint_dtype
from mvlm.convert.output import check_new_folder, staged_folder
from mvlm.errors import CheckpointError, MvlmError
from mvlm.loading import load_pretrained_model
from mvlm.model.builder import save_checkpoint


def has_lora(model_path: str) -> bool:
    """Whether the folder holds LoRA adapters mvlm can merge (its own, or XTuner's)."""
    return any(os.path.isfile(os.path.join(model_path, *parts, "adapter_config.json"))
               for parts in ((), ("llm_adapter",), ("visual_encoder_adapter",)))


def merge_lora(model_path: str, model_base: str | None, save_model_path: str, dtype_name: str = "auto",
               vision_tower: str | None = None) -> None:
    """Load `model_path` over `model_base` with its adapters merged and save it to the new folder `save_model_path`."""
    if not has_lora(model_path):
        raise CheckpointError(f"{model_path} holds no LoRA adapters (adapter_config.json); nothing to merge")
    check_new_folder(save_model_path, "--save-model-path")
    dtype = checkpoint_dtype(model_path) if dtype_name == "auto" else DTYPES[dtype_name]
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, model_base=model_base, torch_dtype=dtype, vision_tower=vision_tower)
    with staged_folder(save_model_path, "--save-model-path") as staging:
        save_checkpoint(staging, model, tokenizer, image_processor)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", "--model_path", required=True, help="the LoRA checkpoint folder")
    parser.add_argument("--model-base", "--model_base", default=None, help="the model the LoRA run started from")
    parser.add_argument("--save-model-path", "--save_model_path", required=True, help="a new folder for the merged model")
    parser.add_argument("--vision-tower", "--vision_tower", default=None,
                        help="an XTuner folder's tower when it has no visual_encoder/ (the tower was frozen)")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
    args = parser.parse_args(argv)
    try:
        merge_lora(args.model_path, args.model_base, args.save_model_path, args.dtype, args.vision_tower)
    except MvlmError as error:
        raise SystemExit(f"mvlm.convert.merge_lora: {error}") from None
    print(f"wrote {args.save_model_path}")


if __name__ == "__main__":
    main()
