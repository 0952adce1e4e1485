"""Check LLaVA samples with the checks training applies, and report every problem (not only the first).

The library half of `python -m mvlm.data.check` (mvlm.data.check is its command line): given the samples,
the data settings and, for the length check, the training tokenizer and image token count, find each bad
image, bad conversation, too-long sample and duplicate id. Runs in forked worker processes.
"""

from __future__ import annotations

import collections
import dataclasses
import functools
import json
import multiprocessing
import os
import sys
from typing import Any, Sequence

from tqdm import tqdm
from transformers import PreTrainedTokenizerBase

from mvlm.constants import IGNORE_INDEX
from mvlm.data.dataset import DataConfig
from mvlm.data.formats import resolve_image
from mvlm.data.images import ImageError, anyres_view_count, load_image
from mvlm.data.tokenize import tokenize_sample
from mvlm.data.validate import REASONS, SampleError, sample_id, sample_images, validate_conversation

CHECK_REASONS = {
    **REASONS,
    "unexpected_error": "an error mvlm does not expect from data (please report it)",
    "duplicate_id": "the id is used by an earlier sample too",
    "truncated": "longer than model_max_length; training cuts the end of the answer(s)",
}

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
    full = tokenize_sample(sample, length_check.tokenizer, config.conv_mode, per_image)
    length = len(full["input_ids"])
    if config.max_length is None or length <= config.max_length:
        return []
    cut = tokenize_sample(sample, length_check.tokenizer, config.conv_mode, per_image, config.max_length)
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
