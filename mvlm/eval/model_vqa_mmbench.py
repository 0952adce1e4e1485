"""`python -m mvlm.eval.model_vqa_mmbench`: answer MMBench's `.tsv` (base64 images), as LLaVA's runner does.

Each row's prompt is its hint (when present), the question, and its options as `A. ...` lines; options
stop at the first empty one. With --all-rounds a row is asked once per option, the option texts rotated by
one each round while the letters stay in place (MMBench's circular evaluation); each answer records
`round_id`, the `options` in the order shown and `option_char`, the letters rotated alongside (LLaVA's
fields). --lang cn uses the Chinese letter instruction with --single-pred-prompt.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import math
import os
import sys
from typing import Any

from mvlm.eval.runner import SINGLE_PRED_PROMPT, Question, RunnerError, add_runner_arguments, runner_main

OPTION_LETTERS = ("A", "B", "C", "D")
SINGLE_PRED_PROMPTS = {"en": SINGLE_PRED_PROMPT, "cn": "请直接回答选项字母。"}
REQUIRED_COLUMNS = ("index", "question", "image", *OPTION_LETTERS[:2])


def is_none(value: Any) -> bool:
    """MMBench's empty cells: missing, NaN, or the strings 'nan' / 'none' in any case (as LLaVA tests them)."""
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and value.lower() in ("nan", "none")


def row_options(row: dict[str, Any]) -> list[str]:
    """The option texts in letter order, up to the first empty one."""
    options = []
    for letter in OPTION_LETTERS:
        value = row.get(letter)
        if is_none(value):
            break
        options.append(str(value))
    return options


def build_prompt(question: str, hint: Any, options: list[str]) -> str:
    """LLaVA's MMBench prompt: hint line (if any), question, then `A. option` lines."""
    prompt = question if is_none(hint) else f"{hint}\n{question}"
    for letter, option in zip(OPTION_LETTERS, options):
        prompt += f"\n{letter}. {option}"
    return prompt


def questions_for_row(row: dict[str, Any], path: str, args: argparse.Namespace) -> list[Question]:
    """One question per round: a single one, or one per option with --all-rounds."""
    index = as_question_id(row["index"])
    options = row_options(row)
    if not options:
        raise RunnerError(f"{path}: row with index {index} has no options (column A is empty)")
    image = decode_image(row["image"], index, path)
    letters = list(OPTION_LETTERS[: len(options)])
    questions = []
    for round_id in range(len(options) if args.all_rounds else 1):
        prompt = build_prompt(str(row["question"]), row.get("hint"), options)
        message = f"{prompt}\n{SINGLE_PRED_PROMPTS[args.lang]}" if args.single_pred_prompt else prompt
        record = {"question_id": index, "round_id": round_id, "prompt": prompt, "text": None,
                  "options": list(options), "option_char": list(letters)}
        questions.append(Question(record=record, message=message, image=image))
        options, letters = options[1:] + options[:1], letters[1:] + letters[:1]
    return questions


def as_question_id(index: Any) -> Any:
    """MMBench's `index` as LLaVA writes it: an int (a non-numeric index stays a string)."""
    text = str(index).strip()
    return int(text) if text.lstrip("-").isdigit() else text


def decode_image(value: Any, index: Any, path: str) -> bytes:
    if is_none(value) or not str(value).strip():
        raise RunnerError(f"{path}: row with index {index} has no image")
    try:
        return base64.b64decode(str(value), validate=False)
    except (binascii.Error, ValueError) as error:
        raise RunnerError(f"{path}: row with index {index}: the image is not valid base64 ({error})") from error


def read_questions(args: argparse.Namespace) -> list[list[Question]]:
    import pandas as pd  # MMBench's own tooling and LLaVA read the tsv with pandas: same empty-cell rules

    path = os.path.expanduser(args.question_file)
    if not os.path.isfile(path):
        raise RunnerError(f"question file {path} does not exist")
    table = pd.read_table(path, dtype=str)
    missing = [column for column in REQUIRED_COLUMNS if column not in table.columns]
    if missing:
        raise RunnerError(f"{path} lacks the column(s) {missing} of an MMBench tsv (it has {list(table.columns)})")
    return [questions_for_row(row, path, args) for row in table.to_dict("records")]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvlm.eval.model_vqa_mmbench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_arguments(parser, max_new_tokens=1024)
    parser.add_argument("--all-rounds", "--all_rounds", action="store_true",
                        help="ask each question once per option, options rotated (circular evaluation)")
    parser.add_argument("--lang", choices=sorted(SINGLE_PRED_PROMPTS), default="en",
                        help="language of the --single-pred-prompt instruction")
    return parser


def main(argv: list[str] | None = None) -> int:
    return runner_main(build_parser(), read_questions, argv)


if __name__ == "__main__":
    sys.exit(main())
