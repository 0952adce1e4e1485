"""`python -m mvlm.data.check`: validate a whole LLaVA dataset before training, and report every bad sample.

Training checks each sample lazily, when a DataLoader worker builds it, and stops at the first bad
one (or skips and counts it with `--skip_bad_samples`). This tool applies the same checks, through
the same code, to every sample up front, so that a bad image or conversation costs a minute instead
of a run:
- images: opened and fully decoded by `load_image` (missing, corrupt, oversized, malformed entries),
  without running the vision processor;
- structure: `validate_conversation` (empty or malformed conversation, unknown role, role order,
  `<image>` count, `<image>` in an answer);
- length: `tokenize_sample` with the training tokenizer and each image's token count, exactly as the
  dataset builds ids; a sample whose prompt alone fills `--model_max_length` is bad, one whose answer
  would be cut is a warning. Needs a tokenizer (`--model_name_or_path`) and the tower's token count
  (`--vision_tower`, or an mvlm checkpoint); without them it is skipped and the report says so;
- duplicate ids (a warning).

Exit status: 0 all good, 1 some sample (or a data file) is bad, 2 a usage error (wrong flags or inputs:
mvlm's user errors exit 1 elsewhere, but here 1 already means "bad data").

This command line resolves the model as training will (`mvlm.loading.training_start`), so it sits above
the loading layer although it lives in `mvlm.data` (the one such import the layer contracts allow); the
checks themselves are `mvlm.data.sample_check`, which needs only a tokenizer and an image processor.
"""

from __future__ import annotations

import argparse
import os
import sys

from mvlm.constants import LLAVA_SELECT_FEATURES
from mvlm.conversation import get_conversation
from mvlm.data.dataset import DataConfig
from mvlm.data.formats import DataFormatError, load_sources, split_data_paths
from mvlm.data.images import ASPECT_RATIOS, processor_input_size
from mvlm.data.processors import load_tokenizer
from mvlm.data.sample_check import (
    CHECK_REASONS,
    LengthCheck,
    Problem,
    build_report,
    check_sample,
    check_samples,
    summary_lines,
    write_json_atomically,
)
from mvlm.data.tokenize import tokenize_sample
from mvlm.errors import FlagError
from mvlm.loading.training_start import TrainingStart, training_processors

__all__ = ["CHECK_REASONS", "LengthCheck", "Problem", "check_sample", "check_samples", "load_length_check", "main"]

DEFAULT_MAX_LENGTH = 2048  # mvlm.train.arguments.TrainingArguments.model_max_length's default


class UsageError(FlagError):
    """Wrong flags or missing inputs: reported as one line, exit status 2."""


# ----------------------------------------------------------------------------------------------------
# Tokenizer and image token count, as training would have them


def load_length_check(
    model_name_or_path: str | None, vision_tower: str | None, select_feature: str
) -> tuple[LengthCheck | None, str]:
    """The tokenizer and image token count that training would use, or None and why the check is skipped."""
    if model_name_or_path is None:
        return None, ("skipped: no tokenizer; pass --model_name_or_path (an LLM with --vision_tower, or an mvlm "
                      "checkpoint) to check lengths")
    start = TrainingStart(model_name_or_path, vision_tower, select_feature)
    try:
        if vision_tower is None and not start.continues_checkpoint:
            load_tokenizer(model_name_or_path)  # a wrong path is a usage error even though lengths go unchecked
            return None, (f"skipped: {model_name_or_path} is not an mvlm checkpoint, so --vision_tower is needed "
                          "to count image tokens")
        processors = training_processors(start)
    except (OSError, ValueError, KeyError) as error:  # a wrong path (or an unreachable hub id)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load the tokenizer or vision config from --model_name_or_path "
                         f"{model_name_or_path} / --vision_tower {vision_tower}: {first_line}") from error
    tokenizer, image_processor, count = processors.tokenizer, processors.image_processor, processors.num_image_tokens
    tile_size = min(processor_input_size(image_processor))
    source = start.describe()
    return LengthCheck(tokenizer, count, tile_size, source), f"{count} tokens per image, tokenizer of {source}"


def _require_path(path: str, flag: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path} does not exist")


# ----------------------------------------------------------------------------------------------------
# Command line


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m mvlm.data.check",
        description="Validate a LLaVA-format dataset with the checks training applies; report every bad sample. "
                    "Exit status: 0 all good, 1 bad samples, 2 usage error.",
    )
    parser.add_argument("--data_path", nargs="+", required=True,
                        help="LLaVA json, jsonl, parquet or a saved datasets folder; several allowed (as training).")
    parser.add_argument("--image_folder", default=None, help="Where relative image paths point.")
    parser.add_argument("--version", default="vicuna_v1", help="Chat template, as training's --version.")
    parser.add_argument("--model_max_length", type=int, default=DEFAULT_MAX_LENGTH,
                        help=f"Tokens per sample, images included (training's default: {DEFAULT_MAX_LENGTH}).")
    parser.add_argument("--model_name_or_path", default=None,
                        help="The LLM (with --vision_tower) or mvlm checkpoint training starts from; gives the "
                             "tokenizer for the length check.")
    parser.add_argument("--vision_tower", default=None, help="The vision tower: gives the tokens per image.")
    parser.add_argument("--mm_vision_select_feature", default="patch", choices=LLAVA_SELECT_FEATURES)
    parser.add_argument("--image_aspect_ratio", default="pad", choices=ASPECT_RATIOS)
    parser.add_argument("--image_grid_pinpoints", default=None, help="anyres candidate resolutions, as training.")
    parser.add_argument("--num_workers", type=int, default=min(8, os.cpu_count() or 1),
                        help="Processes that open images and tokenize (default: min(8, CPUs)).")
    parser.add_argument("--json", default=None, metavar="OUT", help="Also write the report as JSON to OUT.")
    return parser.parse_args(argv)


def run(args: argparse.Namespace) -> int:
    """The check as the command runs it; returns the exit status."""
    paths = split_data_paths(args.data_path)
    for path in paths:
        _require_path(path, "data file")
    if args.image_folder is not None and not os.path.isdir(args.image_folder):
        raise UsageError(f"--image_folder {args.image_folder} is not a folder")
    if args.json and not os.path.isdir(os.path.dirname(os.path.abspath(args.json))):
        raise UsageError(f"--json {args.json}: its folder does not exist")
    length_check, length_note = load_length_check(
        args.model_name_or_path, args.vision_tower, args.mm_vision_select_feature
    )
    config = DataConfig(
        conv_mode=args.version,
        num_image_tokens=length_check.num_image_tokens if length_check else 0,
        image_folder=args.image_folder,
        image_aspect_ratio=args.image_aspect_ratio,
        image_grid_pinpoints=args.image_grid_pinpoints,
        max_length=args.model_max_length,
    )
    _check_template(config, length_check)
    if length_check is not None:
        length_note = f"model_max_length={args.model_max_length}, {length_note}"
    try:
        sources = load_sources(paths)
    except DataFormatError as error:
        print(f"bad data file: {error}")
        return 1
    samples = [sample for _, source_samples in sources for sample in source_samples]
    problems = check_samples(samples, config, length_check, args.num_workers)
    report = build_report(sources, samples, problems, length_note)
    for problem in report["problems"]:
        print(problem["line"])
    for line in summary_lines(report):
        print(line)
    if not samples:
        print("the data holds no samples")
    if args.json:
        write_json_atomically(args.json, report)
    return 1 if report["num_bad"] or not samples else 0


def _check_template(config: DataConfig, length_check: LengthCheck | None) -> None:
    """Fail on a wrong --version (or a tokenizer that cannot render it) once, not once per sample."""
    probe = {"id": "probe", "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "ok"}]}
    try:
        if length_check is None:
            get_conversation(config.conv_mode)
        else:
            tokenize_sample(probe, length_check.tokenizer, config.conv_mode, config.num_image_tokens)
    except ValueError as error:
        raise UsageError(f"--version {config.conv_mode}: {error}") from error


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # the workers are forked processes
    args = parse_args(argv)
    try:
        return run(args)
    except UsageError as error:
        print(f"mvlm.data.check: error: {error}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
