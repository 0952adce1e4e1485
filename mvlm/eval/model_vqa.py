"""`python -m mvlm.eval.model_vqa`: answer LLaVA's question jsonl, writing LLaVA's answers jsonl.

Questions: one JSON object per line with `question_id`, `text`, optionally `image` (relative to
--image-folder; without it the question is asked text-only) and `category`. Answers: `question_id`,
`prompt` (the question's text as asked), `text` (the answer), `answer_id`, `model_id`, `metadata`, one per
question in question order. Greedy by default; batched with --batch-size (the answers of one at a time, up
to floating-point ties); an existing answers file is resumed.
"""

from __future__ import annotations

import argparse
import os
import sys

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.eval.runner import (
    SINGLE_PRED_PROMPT,
    Question,
    RunnerError,
    add_runner_arguments,
    read_json_lines,
    runner_main,
    without_image_tags,
)


def question_from_row(row: dict, path: str, number: int, args: argparse.Namespace) -> Question:
    """One question line -> Question; `prompt` is the text (plus the --single-pred-prompt instruction)."""
    if "question_id" not in row or not isinstance(row.get("text"), str):
        raise RunnerError(f"{path}: question {number} needs 'question_id' and a 'text' string, got keys {sorted(row)}")
    text = row["text"]
    image = row.get("image")
    if image is None and DEFAULT_IMAGE_TOKEN in text:
        raise RunnerError(f"{path}: question {row['question_id']!r} has {DEFAULT_IMAGE_TOKEN} in its text but no image")
    if args.single_pred_prompt:
        text = f"{text}\n{SINGLE_PRED_PROMPT}"
    image_path = os.path.join(args.image_folder, image) if image is not None else None
    return Question(record={"question_id": row["question_id"], "prompt": text, "text": None},
                    message=without_image_tags(text), image=image_path)


def read_questions(args: argparse.Namespace) -> list[list[Question]]:
    path = os.path.expanduser(args.question_file)
    rows = read_json_lines(path)
    return [[question_from_row(row, path, number, args)] for number, row in enumerate(rows, start=1)]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvlm.eval.model_vqa", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_arguments(parser, max_new_tokens=128)
    return parser


def main(argv: list[str] | None = None) -> int:
    return runner_main(build_parser(), read_questions, argv)


if __name__ == "__main__":
    sys.exit(main())
