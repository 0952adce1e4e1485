"""VQAv2: scored by the EvalAI server; this writes the upload file.

Follows LLaVA's `scripts/convert_vqav2_for_submission.py`: answers-file lines that are not JSON are
counted and skipped; every question of the question file (LLaVA uses the full
`llava_vqav2_mscoco_test2015.jsonl`, of which test-dev is a part) gets an entry
`{"question_id", "answer"}` in question-file order, the answer normalised as EvalAI does (see
vqa_answers.py), or "" when unanswered. Upload the file to the VQAv2 challenge on EvalAI.
"""

from __future__ import annotations

import argparse
from typing import Any

from mvlm.eval.scorers.common import answers_by_id, id_key, read_answers, read_questions, write_json
from mvlm.eval.scorers.vqa_answers import normalize_answer

NAME = "vqav2"
HELP = "VQAv2: write the EvalAI upload file (answers normalised as EvalAI does)"
DESCRIPTION = (
    __doc__
    + """
The only difference from LLaVA's converter: ids are compared as strings, and the upload file is
written atomically (a finished file or none).
"""
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--question-file", required=True, help="llava_vqav2_mscoco_test2015.jsonl (the questions the upload covers)"
    )
    parser.add_argument("--upload", required=True, metavar="OUT.json", help="the EvalAI upload file to write")


def upload_entries(answers: list[dict[str, Any]], questions: list[dict[str, Any]]) -> list[dict[str, Any]]:
    by_id = answers_by_id(answers)
    entries = []
    for question in questions:
        answer = by_id.get(id_key(question["question_id"]))
        entries.append(
            {
                "question_id": question["question_id"],
                "answer": normalize_answer(str(answer["text"])) if answer is not None else "",
            }
        )
    return entries


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, malformed = read_answers(args.answers, skip_malformed=True)
    questions = read_questions(args.question_file)
    entries = upload_entries(answers, questions)
    write_json(args.upload, entries, indent=None)  # compact, as json.dump writes it by default
    answered = len({id_key(a["question_id"]) for a in answers} & {id_key(q["question_id"]) for q in questions})
    print(f"total results: {len(answers_by_id(answers))}, total split: {len(questions)}, error_line: {malformed}")
    print(f"wrote {args.upload}: {len(entries)} questions, {answered} answered, {len(entries) - answered} left empty")
    return {
        "results": len(answers_by_id(answers)),
        "questions": len(questions),
        "answered": answered,
        "malformed_lines": malformed,
        "upload": args.upload,
    }
