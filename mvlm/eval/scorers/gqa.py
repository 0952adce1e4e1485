"""GQA: compositional questions on real images, exact-match accuracy on the balanced test-dev (percent).

Follows LLaVA's `scripts/convert_gqa_for_eval.py` followed by GQA's official `eval.py`
(`--tier testdev_balanced`): a prediction is the answer text with trailing '.' removed and lowercased
(nothing else: no whitespace strip), and is right when it equals the question's `answer` exactly.
Accuracy is over the questions with `isBalanced` true; each of them must have a prediction.
"""

from __future__ import annotations

import argparse
from typing import Any

from mvlm.eval.scorers.common import (
    ScoreError,
    answers_by_id,
    read_answers,
    read_json,
    require_all_answered,
    require_field,
)

NAME = "gqa"
HELP = "GQA: exact-match accuracy after LLaVA's normalisation, percent"
DESCRIPTION = (
    __doc__
    + """
The only difference from the official tools: ids are compared as strings.

--questions is GQA's testdev_balanced_questions.json ({question id: {answer, isBalanced, ...}}).
"""
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--questions", required=True, help="testdev_balanced_questions.json")


def normalize_prediction(text: str) -> str:
    """LLaVA's convert_gqa_for_eval.py: 'Yes.' -> 'yes', 'Table ' stays 'table '."""
    return text.rstrip(".").lower()


def score(answers: list[dict[str, Any]], questions_file: str) -> dict[str, Any]:
    """{accuracy (percent), samples}."""
    questions = read_json(questions_file, "--questions")
    if not isinstance(questions, dict):
        raise ScoreError(f"--questions {questions_file} is not GQA's {{question id: question}} object")
    balanced = {
        str(qid): q
        for qid, q in questions.items()
        if require_field(q, "isBalanced", f"{questions_file} question {qid}")
    }
    by_id = answers_by_id(answers)
    require_all_answered(balanced, by_id, questions_file)
    if not balanced:
        raise ScoreError(f"--questions {questions_file} has no balanced question")
    correct = sum(
        normalize_prediction(str(by_id[qid]["text"])) == require_field(q, "answer", f"{questions_file} question {qid}")
        for qid, q in balanced.items()
    )
    return {"accuracy": 100 * correct / len(balanced), "samples": len(balanced)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.questions)
    print(f"Accuracy: {results['accuracy']:.2f}% ({results['samples']} balanced questions)")
    return results
