"""VizWiz-VQA: scored by the EvalAI server; this writes the upload file.

Follows LLaVA's `scripts/convert_vizwiz_for_submission.py`: answers-file lines that are not JSON are
counted and skipped; every question of the question file (`llava_test.jsonl`) must have an answer,
and gets an entry `{"image", "answer"}` in question-file order, the answer normalised as EvalAI does
(see vqa_answers.py). Upload the file to the VizWiz VQA challenge on EvalAI.
"""

from __future__ import annotations

import argparse
from typing import Any

from mvlm.eval.scorers.common import (
    answers_by_id,
    id_key,
    read_answers,
    read_questions,
    require_all_answered,
    require_field,
    write_json,
)
from mvlm.eval.scorers.vqa_answers import normalize_answer

NAME = "vizwiz"
HELP = "VizWiz: write the EvalAI upload file (answers normalised as EvalAI does)"
DESCRIPTION = (
    __doc__
    + """
The only difference from LLaVA's converter: ids are compared as strings, a missing answer is a
one-line error instead of an AssertionError, and the upload file is written atomically.
"""
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question-file", required=True, help="llava_test.jsonl (question_id, image, text)")
    parser.add_argument("--upload", required=True, metavar="OUT.json", help="the EvalAI upload file to write")


def upload_entries(
    answers: list[dict[str, Any]], questions: list[dict[str, Any]], question_file: str
) -> list[dict[str, Any]]:
    by_id = answers_by_id(answers)
    require_all_answered([id_key(q["question_id"]) for q in questions], by_id, question_file)
    return [
        {
            "image": require_field(q, "image", f"{question_file} question {q['question_id']}"),
            "answer": normalize_answer(str(by_id[id_key(q["question_id"])]["text"])),
        }
        for q in questions
    ]


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, malformed = read_answers(args.answers, skip_malformed=True)
    questions = read_questions(args.question_file)
    entries = upload_entries(answers, questions, args.question_file)
    write_json(args.upload, entries, indent=None)
    print(f"total results: {len(answers_by_id(answers))}, total split: {len(questions)}, error_line: {malformed}")
    print(f"wrote {args.upload}: {len(entries)} answers")
    return {
        "results": len(answers_by_id(answers)),
        "questions": len(questions),
        "malformed_lines": malformed,
        "upload": args.upload,
    }
