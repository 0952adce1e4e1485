"""Reading JSON-lines files: one JSON object per line, blank lines ignored, a bad line named by its number.

Training data, question files and answer files are all jsonl. Each of their readers reports a bad line in
its own words (its own error type, the role the file plays), so the caller supplies the error and this
module only does the reading they share.
"""

from __future__ import annotations

import json
from typing import Any, Callable

BadLine = Callable[[int, "ValueError | None"], Exception]
"""bad_line(line_number, decode_error) -> the exception to raise (decode_error: None for a non-object)."""


def read_json_objects(path: str, bad_line: BadLine, skip_malformed: bool = False) -> tuple[list[dict[str, Any]], int]:
    """(objects, number of malformed lines skipped) of the jsonl file at `path`.

    A line that is not JSON, or is JSON but not an object, raises `bad_line(line_number, decode_error)`
    (chained to the decode error). With `skip_malformed` such lines are counted and skipped instead, e.g.
    the half-written last line of a killed run.
    """
    objects: list[dict[str, Any]] = []
    skipped = 0
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            decode_error: ValueError | None = None
            try:
                value = json.loads(line)
            except ValueError as error:
                value, decode_error = None, error
            if isinstance(value, dict):
                objects.append(value)
            elif skip_malformed:
                skipped += 1
            else:
                raise bad_line(line_number, decode_error) from decode_error
    return objects, skipped
