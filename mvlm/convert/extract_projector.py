"""Save a checkpoint's projector alone (LLaVA's `scripts/extract_mm_projector.py`), e.g. to start a new
stage 2 from it with `--pretrain_mm_mlp_adapter`.

    python -m mvlm.convert.extract_projector --model-path CHECKPOINT --output OUT

OUT is a folder (which receives `mm_projector.safetensors`) or a file name ending in `.safetensors`.
Keys are mvlm's (`multi_modal_projector.linear_1.weight`, ...). Any checkpoint `load_pretrained_model`
reads works; an mvlm checkpoint's projector is read straight from its weight files.
"""

from __future__ import annotations

import argparse
import os

from safetensors.torch import save_file

from mvlm.errors import CheckpointError, FlagError, MvlmError, OutputExistsError
from mvlm.loading import is_full_checkpoint, load_pretrained_model
from mvlm.loading.formats.common import read_tensors
from mvlm.model.projector_weights import PREFIX, PROJECTOR_FILE, projector_state_dict


def projector_tensors(model_path: str, model_base: str | None = None, vision_tower: str | None = None) -> dict:
    """The projector's tensors under mvlm's key names, from any readable checkpoint."""
    if is_full_checkpoint(model_path):
        return read_tensors(model_path, lambda key: key.startswith(PREFIX))
    _, model, _, _ = load_pretrained_model(model_path, model_base=model_base, vision_tower=vision_tower)
    return projector_state_dict(model)


def extract_projector(model_path: str, output: str, model_base: str | None = None,
                      vision_tower: str | None = None) -> str:
    """Write the projector of `model_path` to `output` (a folder or a .safetensors file); returns the file."""
    if output.endswith(".bin"):
        raise FlagError(f"--output {output}: mvlm writes safetensors; name the file *.safetensors or give a folder")
    path = output if output.endswith(".safetensors") else os.path.join(output, PROJECTOR_FILE)
    if os.path.exists(path):
        raise OutputExistsError(f"{path} exists; choose another --output")
    tensors = projector_tensors(model_path, model_base, vision_tower)
    if not tensors:
        raise CheckpointError(f"{model_path} holds no projector weights")
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    partial = path + ".partial"
    save_file({key: value.contiguous() for key, value in tensors.items()}, partial, metadata={"format": "pt"})
    os.replace(partial, path)
    return path


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", "--model_path", required=True)
    parser.add_argument("--output", required=True, help="a folder, or a file name ending in .safetensors")
    parser.add_argument("--model-base", "--model_base", default=None)
    parser.add_argument("--vision-tower", "--vision_tower", default=None)
    args = parser.parse_args(argv)
    try:
        path = extract_projector(args.model_path, args.output, args.model_base, args.vision_tower)
    except MvlmError as error:
        raise SystemExit(f"mvlm.convert.extract_projector: {error}") from None
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
