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

Exit status: 0 all good, 1 some sample (or a data file) is bad, 2 a usage error.
"""

from __future__ import annotations

import argparse
import collections
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
from typing import Any, Sequence

from tqdm import tqdm
from transformers import AutoConfig, AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from mvlm.constants import IGNORE_INDEX
from mvlm.conversation import get_conversation
from mvlm.data.dataset import DataConfig
from mvlm.data.formats import DataFormatError, load_sources, resolve_image, split_data_paths
from mvlm.data.images import ASPECT_RATIOS, ImageError, anyres_view_count, load_image, processor_input_size
from mvlm.data.tokenize import tokenize_sample
from mvlm.data.validate import REASONS, SampleError, sample_id, sample_images, validate_conversation
from mvlm.model.builder import add_image_token, checkpoint_kind, ensure_pad_token, load_image_processor
from mvlm.model.vision import load_vision_config, num_image_tokens, resolve_select_strategy

CHECK_REASONS = {
    **REASONS,
    "unexpected_error": "an error mvlm does not expect from data (please report it)",
    "duplicate_id": "the id is used by an earlier sample too",
    "truncated": "longer than model_max_length; training cuts the end of the answer(s)",
}
DEFAULT_MAX_LENGTH = 2048  # mvlm.train.arguments.TrainingArguments.model_max_length's default


class UsageError(Exception):
    """Wrong flags or missing inputs: reported as one line, exit status 2."""


@dataclasses.dataclass(frozen=True)
class Problem:
    index: int
    reason: str
    message: str
    warning: bool = False


@dataclasses.dataclass
class LengthCheck:
    """What the length check needs: the training tokenizer, and the image token count and tile size."""

    tokenizer: PreTrainedTokenizerBase
    num_image_tokens: int
    tile_size: int | None
    source: str


# ----------------------------------------------------------------------------------------------------
# One sample


def check_sample(
    sample: dict[str, Any], index: int, config: DataConfig, length_check: LengthCheck | None
) -> list[Problem]:
    """Every problem of one sample: each bad image, the structure (or length), never only the first."""
    problems: list[Problem] = []
    image_token_counts: list[int] = []
    for entry in sample_images(sample):
        size, error = _open_image(entry, config.image_folder)
        if error is not None:
            problems.append(Problem(index, error.reason, str(error)))
        else:
            image_token_counts.append(_image_token_count(size, config, length_check))
    try:
        if length_check is None or problems:
            validate_conversation(sample)
        else:
            problems += _length_problems(sample, index, config, length_check, image_token_counts)
    except SampleError as error:
        problems.append(Problem(index, error.reason, _without_sample_prefix(str(error), sample)))
    return problems


def _length_problems(
    sample: dict[str, Any], index: int, config: DataConfig, length_check: LengthCheck, counts: list[int]
) -> list[Problem]:
    """Tokenize as the dataset does; raises SampleError (too long, empty answer, structure), warns on a cut."""
    per_image = counts if counts else config.num_image_tokens
    full = tokenize_sample(sample, length_check.tokenizer, config.template, per_image)
    length = len(full["input_ids"])
    if config.max_length is None or length <= config.max_length:
        return []
    cut = tokenize_sample(sample, length_check.tokenizer, config.template, per_image, config.max_length)
    lost = int((full["labels"] != IGNORE_INDEX).sum() - (cut["labels"] != IGNORE_INDEX).sum())
    return [Problem(index, "truncated", f"{length} tokens (images included) > model_max_length={config.max_length}; "
                    f"training cuts it to {len(cut['input_ids'])}, losing {lost} answer token(s)", warning=True)]


@functools.lru_cache(maxsize=4096)  # samples that share an image tend to sit next to each other
def _open_path(path: str) -> tuple[tuple[int, int] | None, ImageError | None]:
    try:
        return load_image(path).size, None
    except ImageError as error:
        return None, error


def _open_image(entry: Any, image_folder: str | None) -> tuple[tuple[int, int] | None, ImageError | None]:
    """(width, height) of an image entry, or the ImageError that training would raise on it."""
    try:
        source = resolve_image(entry, image_folder)
    except ImageError as error:
        return None, error
    if isinstance(source, str):
        return _open_path(source)
    try:
        return load_image(source).size, None
    except ImageError as error:
        return None, error


def _image_token_count(size: tuple[int, int], config: DataConfig, length_check: LengthCheck | None) -> int:
    """Tokens of one image as the dataset counts them: anyres images have one block per view."""
    if config.image_aspect_ratio != "anyres" or length_check is None or length_check.tile_size is None:
        return config.num_image_tokens
    views = anyres_view_count(size, length_check.tile_size, config.image_grid_pinpoints)
    return views * config.num_image_tokens


def _without_sample_prefix(message: str, sample: dict[str, Any]) -> str:
    prefix = f"sample {sample_id(sample)}: "
    return message[len(prefix):] if message.startswith(prefix) else message


# ----------------------------------------------------------------------------------------------------
# The whole dataset, in worker processes


_WORKER_STATE: dict[str, Any] = {}


def _check_range(bounds: tuple[int, int]) -> list[Problem]:
    samples, config, length_check = _WORKER_STATE["args"]
    problems = []
    for index in range(*bounds):
        try:
            problems += check_sample(samples[index], index, config, length_check)
        except Exception as error:  # noqa: BLE001  report it with the sample instead of losing the whole check
            problems.append(Problem(index, "unexpected_error", f"{type(error).__name__}: {error}"))
    return problems


def check_samples(
    samples: Sequence[dict[str, Any]], config: DataConfig, length_check: LengthCheck | None, num_workers: int = 0
) -> list[Problem]:
    """Problems of all samples (images, structure, length), plus duplicate ids; sorted by sample index."""
    _WORKER_STATE["args"] = (samples, config, length_check)
    _open_path.cache_clear()  # files may have changed since an earlier check in this process
    chunk = max(1, min(256, len(samples) // max(1, 4 * num_workers) or 1))
    ranges = [(start, min(start + chunk, len(samples))) for start in range(0, len(samples), chunk)]
    problems: list[Problem] = []
    progress = tqdm(total=len(samples), unit="sample", desc="checking", disable=None, file=sys.stderr)
    try:
        if num_workers > 1 and len(ranges) > 1:
            # fork: the workers share the sample list instead of receiving a pickled copy each
            context = multiprocessing.get_context("fork" if "fork" in multiprocessing.get_all_start_methods() else None)
            with context.Pool(num_workers) as pool:
                for bounds, found in zip(ranges, pool.imap(_check_range, ranges)):
                    problems += found
                    progress.update(bounds[1] - bounds[0])
        else:
            for bounds in ranges:
                problems += _check_range(bounds)
                progress.update(bounds[1] - bounds[0])
    finally:
        progress.close()
        _WORKER_STATE.clear()
    problems += duplicate_id_warnings(samples)
    return sorted(problems, key=lambda problem: (problem.index, problem.warning))


def duplicate_id_warnings(samples: Sequence[dict[str, Any]]) -> list[Problem]:
    first_index: dict[str, int] = {}
    warnings = []
    for index, sample in enumerate(samples):
        if "id" not in sample:
            continue
        name = sample_id(sample)
        if name in first_index:
            warnings.append(Problem(index, "duplicate_id", f"id {name!r} is also the id of the sample at index "
                                    f"{first_index[name]}", warning=True))
        else:
            first_index[name] = index
    return warnings


# ----------------------------------------------------------------------------------------------------
# Tokenizer and image token count, as training would have them


def load_length_check(
    model_name_or_path: str | None, vision_tower: str | None, select_feature: str
) -> tuple[LengthCheck | None, str]:
    """The tokenizer and image token count that training would use, or None and why the check is skipped."""
    if model_name_or_path is None:
        return None, ("skipped: no tokenizer; pass --model_name_or_path (an LLM with --vision_tower, or an mvlm "
                      "checkpoint) to check lengths")
    try:
        full_checkpoint = checkpoint_kind(model_name_or_path) == "full"
    except (ValueError, FileNotFoundError):
        full_checkpoint = False
    try:
        if full_checkpoint:  # as mvlm.train.model_setup continues from it: its tokenizer and config
            tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)
            config = AutoConfig.from_pretrained(model_name_or_path)
            count = num_image_tokens(config.vision_config, config.vision_feature_select_strategy)
            image_processor = AutoImageProcessor.from_pretrained(model_name_or_path, backend="pil")
        else:
            tokenizer = AutoTokenizer.from_pretrained(model_name_or_path)  # as mvlm.model.builder.build_model does
            add_image_token(tokenizer)
            ensure_pad_token(tokenizer)
            if vision_tower is None:
                return None, (f"skipped: {model_name_or_path} is not an mvlm checkpoint, so --vision_tower is needed "
                              "to count image tokens")
            vision_config = load_vision_config(vision_tower)
            strategy = resolve_select_strategy(vision_config, "full" if select_feature == "cls_patch" else None)
            count = num_image_tokens(vision_config, strategy)
            image_processor = load_image_processor(vision_tower, vision_config)
    except (OSError, ValueError, KeyError) as error:  # a wrong path (or an unreachable hub id)
        first_line = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise UsageError(f"cannot load the tokenizer or vision config from --model_name_or_path "
                         f"{model_name_or_path} / --vision_tower {vision_tower}: {first_line}") from error
    tile_size = min(processor_input_size(image_processor))
    source = model_name_or_path + (f" + {vision_tower}" if not full_checkpoint else "")
    return LengthCheck(tokenizer, count, tile_size, source), f"{count} tokens per image, tokenizer of {source}"


def _require_path(path: str, flag: str) -> None:
    if not os.path.exists(path):
        raise UsageError(f"{flag} {path} does not exist")


# ----------------------------------------------------------------------------------------------------
# Report


def _locate(sources: list[tuple[str, list[dict[str, Any]]]]) -> list[tuple[str, int]]:
    """(file, position in the file) of every global sample index."""
    return [(path, position) for path, samples in sources for position in range(len(samples))]


def problem_line(problem: Problem, sample: dict[str, Any], where: tuple[str, int]) -> str:
    head = "warning: sample" if problem.warning else "bad sample"
    location = f"(index {problem.index}, {where[0]} #{where[1]})"
    return f"{head} {sample_id(sample)} {location}: {problem.reason}: {problem.message}"


def build_report(
    sources: list[tuple[str, list[dict[str, Any]]]], samples: list[dict[str, Any]], problems: list[Problem],
    length_note: str,
) -> dict[str, Any]:
    where = _locate(sources)
    bad_by_reason: dict[str, set[int]] = collections.defaultdict(set)
    warnings_by_reason: dict[str, set[int]] = collections.defaultdict(set)
    for problem in problems:
        (warnings_by_reason if problem.warning else bad_by_reason)[problem.reason].add(problem.index)
    bad = {problem.index for problem in problems if not problem.warning}
    return {
        "files": [path for path, _ in sources],
        "num_samples": len(samples),
        "num_bad": len(bad),
        "num_warnings": sum(1 for problem in problems if problem.warning),
        "length_check": length_note,
        "bad_by_reason": {reason: len(indices) for reason, indices in sorted(bad_by_reason.items())},
        "warnings_by_reason": {reason: len(indices) for reason, indices in sorted(warnings_by_reason.items())},
        "problems": [
            {
                "id": sample_id(samples[problem.index]),
                "index": problem.index,
                "file": where[problem.index][0],
                "position": where[problem.index][1],
                "severity": "warning" if problem.warning else "error",
                "reason": problem.reason,
                "message": problem.message,
                "line": problem_line(problem, samples[problem.index], where[problem.index]),
            }
            for problem in problems
        ],
    }


def summary_lines(report: dict[str, Any]) -> list[str]:
    good = report["num_samples"] - report["num_bad"]
    lines = [f"checked {report['num_samples']} samples from {len(report['files'])} file(s): {report['num_bad']} bad, "
             f"{good} good, {report['num_warnings']} warning(s)"]
    for title, counts in (("bad samples by reason:", report["bad_by_reason"]),
                          ("warnings by reason:", report["warnings_by_reason"])):
        if counts:
            lines.append(title)
            lines += [f"  {reason}: {count} ({CHECK_REASONS[reason]})" for reason, count in counts.items()]
    lines.append(f"length check: {report['length_check']}")
    if report["num_bad"]:
        lines.append("fix or remove the bad samples, or train with --skip_bad_samples True to skip and count them")
    return lines


def write_json_atomically(path: str, data: Any) -> None:
    """Write through a temporary file, so an existing report is never left half-written."""
    temporary = f"{path}.tmp-{os.getpid()}"
    with open(temporary, "w", encoding="utf-8") as handle:
        json.dump(data, handle, indent=1, ensure_ascii=False)
    os.replace(temporary, path)


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
    parser.add_argument("--mm_vision_select_feature", default="patch", choices=("patch", "cls_patch"))
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
        template=args.version,
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
            get_conversation(config.template)
        else:
            tokenize_sample(probe, length_check.tokenizer, config.template, config.num_image_tokens)
    except ValueError as error:
        raise UsageError(f"--version {config.template}: {error}") from error


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
