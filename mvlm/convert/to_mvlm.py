"""Write any checkpoint `load_pretrained_model` reads as a plain mvlm checkpoint.

    python -m mvlm.convert.to_mvlm --model-path SRC --save-path OUT [--model-base LLM] [--vision-tower TOWER]
                                   [--conv-mode NAME]

SRC: a HuggingFace LLaVA, official LLaVA, Mipha / LLaVA-Phi or XTuner folder (decided by its config and
files), or an mvlm LoRA / projector folder over `--model-base`. `--vision-tower` replaces the tower a
LLaVA or XTuner folder names (a local copy, offline). `--conv-mode` records the chat template the model
was trained with, which most foreign folders do not say. OUT then trains (`--model_name_or_path OUT`),
chats and evaluates like any mvlm checkpoint.
"""

from __future__ import annotations

import argparse

import torch

from mvlm.conversation import conv_templates
from mvlm.convert.dtypes import DTYPES, checkpoint_dtype
from mvlm.convert.output import check_new_folder, staged_folder
from mvlm.errors import FlagError, MvlmError
from mvlm.loading import load_pretrained_model
from mvlm.model.builder import save_checkpoint


def convert_to_mvlm(
    model_path: str, save_path: str, model_base: str | None = None, vision_tower: str | None = None,
    conv_mode: str | None = None, dtype: torch.dtype | None = None,
) -> None:
    """Load `model_path` (any readable format) and save it as an mvlm checkpoint in the new folder `save_path`."""
    if conv_mode is not None and conv_mode not in conv_templates:
        raise FlagError(f"--conv-mode {conv_mode!r} is not a template; choose one of {', '.join(sorted(conv_templates))}")
    check_new_folder(save_path)
    tokenizer, model, image_processor, _ = load_pretrained_model(
        model_path, model_base=model_base, vision_tower=vision_tower,
        torch_dtype=dtype or checkpoint_dtype(model_path))
    if conv_mode is not None:
        model.config.conv_mode = conv_mode
    with staged_folder(save_path) as staging:
        save_checkpoint(staging, model, tokenizer, image_processor)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", "--model_path", required=True)
    parser.add_argument("--save-path", "--save_path", required=True, help="a new folder for the mvlm checkpoint")
    parser.add_argument("--model-base", "--model_base", default=None,
                        help="the LLM (or mvlm checkpoint) a LoRA, projector-only or XTuner folder was trained from")
    parser.add_argument("--vision-tower", "--vision_tower", default=None,
                        help="tower checkpoint replacing the one the folder names (mm_vision_tower), e.g. a local copy")
    parser.add_argument("--conv-mode", "--conv_mode", default=None, help="chat template to record in the checkpoint")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto")
    args = parser.parse_args(argv)
    try:
        convert_to_mvlm(args.model_path, args.save_path, args.model_base, args.vision_tower, args.conv_mode,
                        None if args.dtype == "auto" else DTYPES[args.dtype])
    except MvlmError as error:
        raise SystemExit(f"mvlm.convert.to_mvlm: {args.model_path}: {error}") from None
    print(f"wrote {args.save_path}")


if __name__ == "__main__":
    main()
