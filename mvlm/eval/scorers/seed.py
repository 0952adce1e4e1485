"""SEED-Bench: multiple-choice questions in 12 types (9 image, 3 video); accuracy per type.

Follows LLaVA's `scripts/convert_seed_for_submission.py`: every question of the official annotation
is scored; an answer is right only when its text equals the question's `answer` letter exactly (the
LLaVA prompt asks for the letter alone; "A." or "a" are wrong); a question without an answer is
wrong. Accuracy per question type (named by the annotation's `question_type` map), in total, and per
data type (image, video), all in percent as the script prints them and the papers report them (e.g.
58.6, not 0.586): SEED-IMG, the number LLaVA reports, is `per_data_type.image`.
"""

from __future__ import annotations

import argparse
from typing import Any

from mvlm.eval.scorers.common import ScoreError, answers_by_id, id_key, read_answers, read_json, require_field

NAME = "seed"
HELP = "SEED-Bench: exact-letter accuracy per question type, per data type and in total, percent"
DESCRIPTION = (
    __doc__
    + """
The only difference from LLaVA's script: ids are compared as strings (the script converts numeric
annotation ids to int, so string ids in an answers file silently count as unanswered there).

--question-file is the official SEED-Bench.json ('questions' with question_id, answer,
question_type_id, data_type; 'question_type' mapping names to ids).
"""
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question-file", required=True, help="SEED-Bench.json (the official annotation)")


def percent_of(right: int, total: int) -> float:
    """An accuracy in percent, the unit of SEED-Bench's leaderboard and the papers, computed as LLaVA's script does."""
    return right / total * 100


def score(answers: list[dict[str, Any]], annotation_file: str) -> dict[str, Any]:
    """{accuracy, per_type: {type name: acc}, per_data_type: {image|video: acc}}, all in percent."""
    annotation = read_json(annotation_file, "--question-file")
    questions = require_field(annotation, "questions", annotation_file)
    type_names = {
        type_id: name for name, type_id in require_field(annotation, "question_type", annotation_file).items()
    }
    if not questions:
        raise ScoreError(f"{annotation_file} has no questions")
    by_id = answers_by_id(answers)
    counts: dict[Any, list[int]] = {}
    data_counts: dict[str, list[int]] = {}
    for question in questions:
        where = f"{annotation_file} question {question.get('question_id')}"
        type_id = require_field(question, "question_type_id", where)
        answer = by_id.get(id_key(require_field(question, "question_id", where)))
        right = answer is not None and answer["text"] == require_field(question, "answer", where)
        for tally in (
            counts.setdefault(type_id, [0, 0]),
            data_counts.setdefault(require_field(question, "data_type", where), [0, 0]),
        ):
            tally[0] += right
            tally[1] += 1
    unknown = [type_id for type_id in counts if type_id not in type_names]
    if unknown:
        raise ScoreError(f"{annotation_file}: question_type_id {unknown[0]} is not in its 'question_type' map")
    return {
        "accuracy": percent_of(sum(c for c, _ in counts.values()), len(questions)),
        "per_type": {type_names[type_id]: percent_of(*counts[type_id]) for type_id in sorted(counts)},
        "per_data_type": {data_type: percent_of(*tally) for data_type, tally in data_counts.items()},
    }


def report(results: dict[str, Any]) -> list[str]:
    """The lines LLaVA's script prints (accuracies already in percent)."""
    lines = [f"{name}: {accuracy:.2f}%" for name, accuracy in results["per_type"].items()]
    lines.append(f"Total accuracy: {results['accuracy']:.2f}%")
    lines += [f"{data_type} accuracy: {accuracy:.2f}%" for data_type, accuracy in results["per_data_type"].items()]
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.question_file)
    print("\n".join(report(results)))
    return results
