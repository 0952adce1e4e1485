"""ScienceQA: multiple-choice science questions; LLaVA reports the accuracy on the image subset (IMG).

Follows LLaVA-1.5's `llava/eval/eval_science_qa.py`: every problem of the split is scored, in
`pid_splits.json` order; a problem without an answer is FAILED (wrong). An answer is read as:
the whole text if it is a bare option letter A-E; else its first letter if the text is "X. ..."
(a letter A-E, then ". "); else the letter of "The answer is X" followed by any character (the
official regex `The answer is ([A-Z]).`), only when that occurs exactly once; else FAILED. A letter
beyond the problem's number of choices is wrong. IMG accuracy is over the answers whose prompt
contains `<image>`. Accuracies are percentages.
"""

from __future__ import annotations

import argparse
import os
import re
from typing import Any

from mvlm.eval.scorers.common import ScoreError, answers_by_id, read_answers, read_json, require_field

NAME = "scienceqa"
HELP = "ScienceQA: accuracy and IMG (image-subset) accuracy, percent"
DESCRIPTION = (
    __doc__
    + """
mvlm differs only where the official script divides by zero: with no image question answered, the
IMG accuracy is 0.0. Ids are compared as strings.

--base-dir holds ScienceQA's problems.json and pid_splits.json (the ScienceQA repository's data/scienceqa).
"""
)

OPTIONS = ("A", "B", "C", "D", "E")
FAILED = "FAILED"
ANSWER_SENTENCE = re.compile(r"The answer is ([A-Z]).")
IMAGE_TOKEN = "<image>"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--base-dir", required=True, help="folder with problems.json and pid_splits.json")
    parser.add_argument("--split", default="test", help="split of pid_splits.json to score (default: test)")


def parse_option(text: str) -> str:
    """The option letter the official script reads from an answer, or 'FAILED'."""
    if text in OPTIONS:
        return text
    if len(text) >= 3 and text[0] in OPTIONS and text[1:3] == ". ":
        return text[0]
    found = ANSWER_SENTENCE.findall(text)
    return found[0] if len(found) == 1 else FAILED


def option_index(letter: str, num_choices: int) -> int:
    """Index of the chosen choice, -1 when the letter is FAILED or beyond the problem's choices."""
    return OPTIONS.index(letter) if letter in OPTIONS[:num_choices] else -1


def score(answers: list[dict[str, Any]], base_dir: str, split: str = "test") -> dict[str, Any]:
    """{acc, img_acc, correct, total, img_correct, img_total} (acc and img_acc in percent)."""
    splits = read_json(os.path.join(base_dir, "pid_splits.json"), "--base-dir file")
    problems = read_json(os.path.join(base_dir, "problems.json"), "--base-dir file")
    if split not in splits:
        raise ScoreError(f"--split {split} is not in pid_splits.json (it has: {', '.join(sorted(splits))})")
    by_id = answers_by_id(answers)
    correct = total = img_correct = img_total = 0
    for problem_id in splits[split]:
        if problem_id not in problems:
            raise ScoreError(f"problem {problem_id} of split {split} is not in problems.json")
        problem = problems[problem_id]
        answer = by_id.get(str(problem_id), {"text": FAILED, "prompt": "Unknown"})
        choices = require_field(problem, "choices", f"problems.json problem {problem_id}")
        is_right = option_index(parse_option(str(answer["text"])), len(choices)) == require_field(
            problem, "answer", f"problems.json problem {problem_id}"
        )
        total += 1
        correct += is_right
        if IMAGE_TOKEN in str(answer.get("prompt", "")):
            img_total += 1
            img_correct += is_right
    if not total:
        raise ScoreError(f"split {split} of pid_splits.json is empty")
    return {
        "acc": correct / total * 100,
        "img_acc": img_correct / img_total * 100 if img_total else 0.0,
        "correct": correct,
        "total": total,
        "img_correct": img_correct,
        "img_total": img_total,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.base_dir, args.split)
    print(
        f"Total: {results['total']}, Correct: {results['correct']}, Accuracy: {results['acc']:.2f}%, "
        f"IMG-Accuracy: {results['img_acc']:.2f}% ({results['img_correct']}/{results['img_total']})"
    )
    return results
