"""Your own question set: exact-match accuracy, overall and per category.

For questions with one right short answer (a colour, a count, yes/no), such as the demo's held-out set.
The labels are a jsonl file with one `{"question_id", "answer", "category"}` object per question
(`category` optional). An answer is right when it equals the label after both are lowercased and
stripped of surrounding whitespace and of one trailing '.' ("Red." matches "red"; "a red one" does not).
Every question of the label file needs an answer; answers to questions not in it are ignored.
"""

from __future__ import annotations

import argparse
from typing import Any

from mvlm.eval.scorers.common import (
    ScoreError,
    answers_by_id,
    id_key,
    percent,
    read_answers,
    read_jsonl,
    require_all_answered,
    require_field,
)

NAME = "exact"
HELP = "your own questions: exact-match accuracy, overall and per category"
DESCRIPTION = (
    __doc__
    + """
mvlm's own scorer, for question sets of your own: there is no official script for it to differ from.

--annotation-file: jsonl of {"question_id", "answer", "category"} lines, one per question.
"""
)
UNCATEGORISED = "(none)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotation-file", required=True, metavar="GT.jsonl",
                        help='jsonl of {"question_id", "answer", "category"} lines')


def normalize(text: str) -> str:
    """'  Red. ' -> 'red': case, surrounding whitespace and one trailing full stop do not count."""
    text = text.strip().lower()
    return text[:-1].rstrip() if text.endswith(".") else text


def score(answers: list[dict[str, Any]], annotation_file: str) -> dict[str, Any]:
    """{accuracy, per_category: {category: accuracy}, counts: {category: questions}, correct, total}."""
    labels, _ = read_jsonl(annotation_file, "--annotation-file")
    if not labels:
        raise ScoreError(f"--annotation-file {annotation_file} has no questions")
    keyed = {}
    for number, label in enumerate(labels, start=1):
        where = f"--annotation-file {annotation_file} line {number}"
        key = id_key(require_field(label, "question_id", where))
        if key in keyed:
            raise ScoreError(f"{where}: question_id {key} appears twice; each question needs one label")
        if not isinstance(require_field(label, "answer", where), str):
            raise ScoreError(f"{where}: 'answer' must be a string, got {label['answer']!r}")
        keyed[key] = label
    by_id = answers_by_id(answers)
    require_all_answered(keyed, by_id, annotation_file)
    tallies: dict[str, list[int]] = {}
    for key, label in keyed.items():
        right = normalize(str(by_id[key]["text"])) == normalize(label["answer"])
        tally = tallies.setdefault(str(label.get("category", UNCATEGORISED)), [0, 0])
        tally[0] += right
        tally[1] += 1
    correct = sum(right for right, _ in tallies.values())
    return {
        "accuracy": correct / len(keyed),
        "per_category": {category: right / total for category, (right, total) in tallies.items()},
        "counts": {category: total for category, (_, total) in tallies.items()},
        "correct": correct,
        "total": len(keyed),
    }


def report(results: dict[str, Any]) -> list[str]:
    lines = [
        f"{category}: {percent(accuracy)} of {results['counts'][category]}"
        for category, accuracy in results["per_category"].items()
    ]
    lines.append(f"Total accuracy: {percent(results['accuracy'])} ({results['correct']} of {results['total']})")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.annotation_file)
    print("\n".join(report(results)))
    return results
