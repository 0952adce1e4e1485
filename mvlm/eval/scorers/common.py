"""What every scorer needs: reading answer/question files, matching ids, atomic output, one error type.

Scorers raise `ScoreError` for bad input; the CLI prints its message as one line (no stack trace).
"""

from __future__ import annotations

import json
import os
import tempfile
from typing import Any, Callable, Iterable

from mvlm.errors import ScoreError
from mvlm.jsonl import read_json_objects


def id_key(question_id: Any) -> str:
    """Ids compared as strings: answers written with `"42"` and questions with `42` still match.

    The official scripts compare raw JSON values, so such a type mismatch silently scores every
    question as unanswered there; mvlm treats them as the same id instead.
    """
    return str(question_id)


def read_json(path: str, what: str) -> Any:
    """A whole JSON file; `what` names the flag or role of the file in the error message."""
    if not os.path.isfile(path):
        raise ScoreError(f"{what} {path} does not exist")
    with open(path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise ScoreError(f"{what} {path} is not valid JSON ({error})") from None


def read_jsonl(path: str, what: str, skip_malformed: bool = False) -> tuple[list[dict[str, Any]], int]:
    """(records, number of malformed lines skipped) of a jsonl file; blank lines are ignored.

    With `skip_malformed`, lines that are not JSON objects are counted and skipped (LLaVA's VQAv2 and
    VizWiz converters do this, e.g. for a half-written last line of a killed run); otherwise they are
    an error naming the file and line.
    """
    if not os.path.isfile(path):
        raise ScoreError(f"{what} {path} does not exist")
    return read_json_objects(
        path,
        lambda line_number, _error: ScoreError(
            f"{what} {path} line {line_number} is not a JSON object; fix or delete that line"
        ),
        skip_malformed,
    )


def read_questions(path: str) -> list[dict[str, Any]]:
    """The records of a jsonl question file, each required to have the `question_id` its answers refer to."""
    questions, _ = read_jsonl(path, "question file")
    for number, question in enumerate(questions, 1):
        require_field(question, "question_id", f"{path} line {number}")
    return questions


def read_answers(paths: Iterable[str], skip_malformed: bool = False) -> tuple[list[dict[str, Any]], int]:
    """The answers of one or several files (e.g. the `--num-chunks` parts), concatenated in the order given.

    Passing the chunk files directly replaces LLaVA's `cat ... > merge.jsonl` step. Every answer needs
    `question_id` and `text` (the format `mvlm.eval.model_vqa` and LLaVA's runners write).
    """
    answers: list[dict[str, Any]] = []
    malformed = 0
    for path in paths:
        records, skipped = read_jsonl(path, "answers file", skip_malformed)
        for number, record in enumerate(records, start=1):
            for field in ("question_id", "text"):
                if field not in record:
                    raise ScoreError(
                        f"answers file {path}: answer {number} has no '{field}' field; "
                        "is this an answers file written by mvlm.eval.model_vqa?"
                    )
        answers += records
        malformed += skipped
    return answers, malformed


def answers_by_id(answers: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Answers keyed by `id_key(question_id)`; a repeated id keeps its last answer, as the official dicts do."""
    return {id_key(answer["question_id"]): answer for answer in answers}


def require_field(record: dict[str, Any], field: str, where: str) -> Any:
    """record[field], or a ScoreError that says where the record came from."""
    if field not in record:
        raise ScoreError(f"{where} has no '{field}' field")
    return record[field]


def require_all_answered(question_ids: Iterable[str], answered: Iterable[str], question_file: str) -> None:
    """Stop when some questions have no answer: the benchmark's number is defined over all of them."""
    answered_set = set(answered)
    missing = [question_id for question_id in question_ids if question_id not in answered_set]
    if missing:
        shown = ", ".join(missing[:5]) + (" ..." if len(missing) > 5 else "")
        raise ScoreError(
            f"{len(missing)} questions of {question_file} have no answer (e.g. {shown}); "
            "finish the run (re-running the runner resumes) or pass every chunk's answers file"
        )


def write_atomically(path: str, write: Callable[[str], None]) -> None:
    """Call write(tmp_path), then move the finished file over `path`: an interrupted run never leaves half a file."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    suffix = os.path.splitext(path)[1]
    handle, tmp_path = tempfile.mkstemp(dir=folder, prefix=".tmp-", suffix=suffix)
    os.close(handle)
    try:
        write(tmp_path)
        os.replace(tmp_path, path)
    except BaseException:
        if os.path.exists(tmp_path):
            os.remove(tmp_path)
        raise


def write_json(path: str, data: Any, indent: int | None = 2) -> None:
    """JSON written atomically (see write_atomically)."""

    def write(tmp_path: str) -> None:
        with open(tmp_path, "w", encoding="utf-8") as handle:
            json.dump(data, handle, indent=indent)
            if indent is not None:
                handle.write("\n")

    write_atomically(path, write)


def percent(value: float) -> str:
    """A fraction printed as the papers do: 0.74387 -> '74.39%'."""
    return f"{value * 100:.2f}%"
