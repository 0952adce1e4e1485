"""MMBench: multiple-choice questions, scored with circular evaluation (percent).

A question and its circular copies (rows whose `index` agree modulo 1,000,000, as in the official
dev/test TSVs, or the rotated rounds `--all-rounds` makes, which share the question's index) form a
group; the group counts as right only if every copy is answered right. The option is read from an
answer by exact matching, step for step as VLMEvalKit's `can_infer` (vlmeval/utils/matching_util.py)
does before it would ask an LLM:
1. an answer holding "Failed to obtain answer via API" skips to step 5; one holding a refusal
   VLMEvalKit knows ("Cannot determine the answer", ...) reads as Z (no option: wrong);
2. with `.()[],:;!*#{}` replaced by spaces and the answer split into words: if exactly one option
   letter is a word and its first occurrence is one of the last four words, that letter;
3. if no option letter is a word but "Z" is, Z;
4. else the letter of the first "(correct) answer is X" (any case, X in A-D, `**` around it allowed),
   if X is an option ("A cat sits on the mat, so the answer is B" names B);
5. else, if the answer is at most twice as long as the options' texts together, the option whose
   text (any case) it contains, if exactly one does; else no option (wrong: mvlm asks no LLM).
For a rotated round, the letter is mapped back through the answer's `option_char` to the question's
own letter. Vanilla accuracy: the original questions only (index below 1,000,000, round 0).

`--upload OUT.xlsx|.tsv` writes the file the MMBench server takes, as LLaVA's
`scripts/convert_mmbench_for_submission.py` does: the TSV without its hint/category/source/image/
comment/l2-category columns and with a `prediction` column (the answer text) as the 7th column.
"""

from __future__ import annotations

import argparse
import math
import os
import re
from typing import Any

from mvlm.eval.scorers.common import ScoreError, read_answers, write_atomically

NAME = "mmbench"
HELP = "MMBench: circular and vanilla accuracy (exact-match option extraction), upload file"
DESCRIPTION = (
    __doc__
    + """
mvlm differs from LLaVA's converter in one place: with `--all-rounds` answers, a row's prediction
is its round-0 answer (LLaVA's keeps the last round's, whose letter refers to rotated options).
Every TSV row must have an answer before accuracies are computed. A TSV without an `answer` column
(the test split) gives no accuracy; pass --upload. Writing .xlsx needs `pip install openpyxl`.
"""
)

CIRCULAR_OFFSET = 1_000_000
OPTION_LETTERS = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
PUNCTUATION_AS_SPACE = ".()[],:;!*#{}"
API_FAILURE = "Failed to obtain answer via API"
LAST_WORDS = 4  # VLMEvalKit: words.index(letter) > len(words) - 5
ANSWER_IS = re.compile(r"(?:correct\s+)?answer\s+is\s+\**([ABCD])\**", re.IGNORECASE)
REFUSALS = (
    "Sorry, I can't help with images of people yet.",
    "I can't process this file.",
    "I'm sorry, but without the image provided",
    "Cannot determine the answer",
)
UPLOAD_DROPPED_COLUMNS = ("hint", "category", "source", "image", "comment", "l2-category")
PREDICTION_COLUMN_POSITION = 6


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question-file", required=True, help="the MMBench .tsv (e.g. mmbench_dev_20230712.tsv)")
    parser.add_argument("--upload", metavar="OUT.xlsx|OUT.tsv", help="also write the MMBench submission file")


def is_missing(value: Any) -> bool:
    """An empty TSV cell, as LLaVA's runner sees it (NaN, or the strings nan/none)."""
    return (
        value is None
        or (isinstance(value, float) and math.isnan(value))
        or (isinstance(value, str) and value.lower() in ("nan", "none"))
    )


def infer_letter(text: str, choices: dict[str, str]) -> str | None:
    """The option letter an answer names, or "Z" (a refusal), or None: VLMEvalKit's `can_infer`.

    mvlm reads answers as VLMEvalKit's exact matching does (open-compass/VLMEvalKit,
    vlmeval/utils/matching_util.py: `can_infer_option`, then `can_infer_text` when that finds no
    letter; the steps are listed in the module docstring), so that its MMBench numbers compare with
    the leaderboards'. Reimplemented from that behaviour, without VLMEvalKit's debugging branch under
    the VERBOSE environment variable.
    """
    return letter_of_words(text, choices) or letter_of_option_text(text, choices)


def answer_words(text: str) -> list[str]:
    """The answer's words once VLMEvalKit's punctuation is spaces: "(B)." gives "B", but "B?" stays "B?"."""
    for mark in PUNCTUATION_AS_SPACE:
        text = text.replace(mark, " ")
    return text.split()


def letter_of_words(text: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_option`: a letter written as a word near the end, "Z", or "answer is X".

    In order: a failed API call names nothing (the option text may still, in `letter_of_option_text`);
    a known refusal is "Z"; exactly one option letter among the words is that letter if its first
    occurrence is one of the last four words; no option letter but a word "Z" is "Z"; else the letter
    of "(correct) answer is X" (X in A-D, any case, `**` around it allowed), if it is an option.
    """
    if API_FAILURE in text:
        return None
    if any(refusal in text for refusal in REFUSALS):
        return "Z"
    words = answer_words(text)
    named = [letter for letter in choices if letter in words]
    if len(named) == 1 and words.index(named[0]) >= len(words) - LAST_WORDS:
        return named[0]
    if not named and "Z" in words:
        return "Z"
    return letter_after_answer_is(text, choices)


def letter_after_answer_is(text: str, choices: dict[str, str]) -> str | None:
    """The option of VLMEvalKit's "answer is X" pattern: "... so the answer is **b**" names B.

    Its first match only, and no word boundary after the letter, as VLMEvalKit has it ("the answer
    is because ..." names B).
    """
    match = ANSWER_IS.search(text)
    letter = match.group(1).upper() if match else None
    return letter if letter in choices else None


def letter_of_option_text(text: str, choices: dict[str, str]) -> str | None:
    """VLMEvalKit's `can_infer_text`: the one option whose text (any case) the answer contains.

    Only for answers at most twice as long as all the options' texts together: in a longer answer an
    option's text is too likely to appear in passing.
    """
    lowered = text.lower()
    if len(lowered) > 2 * sum(len(option) for option in choices.values()):
        return None
    by_text = [letter for letter, option in choices.items() if option.lower() in lowered]
    return by_text[0] if len(by_text) == 1 else None


def as_index(value: Any, where: str) -> int:
    """An MMBench index as an int (the TSV's column and LLaVA's question_id are numbers)."""
    try:
        return int(value)
    except (TypeError, ValueError):
        raise ScoreError(f"{where}: index {value!r} is not a number; is this an MMBench file?") from None


def _read_tsv(path: str):
    if not os.path.isfile(path):
        raise ScoreError(f"--question-file {path} does not exist")
    import pandas  # only MMBench needs it (a dependency of `datasets`)

    table = pandas.read_table(path)
    if "index" not in table.columns:
        raise ScoreError(f"--question-file {path} has no 'index' column; is it an MMBench .tsv?")
    return table


def _answer_choices(answer: dict[str, Any], row: dict[str, Any]) -> tuple[dict[str, str], list[str]]:
    """(shown letter -> option text, original letter of each shown position) of one answer."""
    options = answer.get("options")
    if options is None:
        if answer.get("round_id", 0) not in (0, None):
            raise ScoreError(
                f"answer to {answer['question_id']} round {answer['round_id']} has no 'options'/'option_char' "
                "to undo its rotation; score answers written by mvlm.eval.model_vqa_mmbench"
            )
        options = [row[letter] for letter in OPTION_LETTERS if letter in row and not is_missing(row[letter])]
    original = answer.get("option_char") or list(OPTION_LETTERS[: len(options)])
    return dict(zip(OPTION_LETTERS, (str(option) for option in options))), list(original)


def score(answers: list[dict[str, Any]], table) -> dict[str, Any]:
    """{circular_accuracy, vanilla_accuracy} in percent, with group and question counts."""
    rows = {as_index(row["index"], "question file"): row for row in table.to_dict("records")}
    answered = set()
    groups: dict[int, bool] = {}
    vanilla_right = vanilla_total = 0
    for answer in answers:
        index = as_index(answer["question_id"], "answers file")
        if index not in rows:
            raise ScoreError(f"answer to index {index} has no row in the question file")
        row = rows[index]
        choices, original = _answer_choices(answer, row)
        shown = infer_letter(str(answer["text"]), choices)
        picked = original[OPTION_LETTERS.index(shown)] if shown in choices else None
        right = picked is not None and picked == row["answer"]
        group = index % CIRCULAR_OFFSET
        groups[group] = groups.get(group, True) and right
        if index < CIRCULAR_OFFSET and answer.get("round_id", 0) in (0, None):
            vanilla_total += 1
            vanilla_right += right
        answered.add(index)
    missing = sorted(set(rows) - answered)
    if missing:
        raise ScoreError(
            f"{len(missing)} TSV rows have no answer (e.g. index {missing[0]}); circular evaluation needs "
            "every copy of every question answered"
        )
    return {
        "circular_accuracy": 100 * sum(groups.values()) / len(groups),
        "vanilla_accuracy": 100 * vanilla_right / vanilla_total if vanilla_total else 0.0,
        "groups": len(groups),
        "questions": vanilla_total,
    }


def write_upload(path: str, answers: list[dict[str, Any]], table) -> None:
    """LLaVA's submission table (see the module docstring), written atomically."""
    upload = table.drop(columns=[c for c in UPLOAD_DROPPED_COLUMNS if c in table.columns])
    upload.insert(min(PREDICTION_COLUMN_POSITION, len(upload.columns)), "prediction", None)
    for answer in answers:
        if answer.get("round_id", 0) in (0, None):
            upload.loc[table["index"] == as_index(answer["question_id"], "answers file"), "prediction"] = answer["text"]
    if path.endswith(".xlsx"):
        try:
            import openpyxl  # noqa: F401
        except ImportError:
            raise ScoreError("--upload .xlsx needs openpyxl: pip install openpyxl (or write a .tsv)") from None
        write_atomically(path, lambda tmp: upload.to_excel(tmp, index=False, engine="openpyxl"))
    elif path.endswith(".tsv"):
        write_atomically(path, lambda tmp: upload.to_csv(tmp, sep="\t", index=False))
    else:
        raise ScoreError(f"--upload {path}: the name must end in .xlsx or .tsv")


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    table = _read_tsv(args.question_file)
    results: dict[str, Any] = {"circular_accuracy": None, "vanilla_accuracy": None}
    if "answer" in table.columns:
        results = score(answers, table)
        print(
            f"Circular accuracy: {results['circular_accuracy']:.2f}% ({results['groups']} questions, all copies right)"
        )
        print(f"Vanilla accuracy: {results['vanilla_accuracy']:.2f}% ({results['questions']} original questions)")
    elif not args.upload:
        raise ScoreError(f"{args.question_file} has no 'answer' column (a test split): nothing to score; pass --upload")
    else:
        print(f"{args.question_file} has no answers (test split): no accuracy, writing the upload file only")
    if args.upload:
        write_upload(args.upload, answers, table)
        print(f"wrote {args.upload}")
        results["upload"] = args.upload
    return results
