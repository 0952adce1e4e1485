"""TextVQA: questions about text in images, VQA soft accuracy over 10 human answers (percent).

Follows LLaVA's `llava/eval/eval_textvqa.py` with its `m4c_evaluator.TextVQAAccuracyEvaluator`:
an answer is matched to its annotation by (question_id = the image id, the question lowercased), the
question being read back from the prompt: for a prompt starting `OCR tokens: `, the text between
`Question: ` and ` Short answer:`; for a three-line prompt holding `Reference OCR token: `, the line
that is not the OCR line (LLaVA's `llava_textvqa_val_v051_ocr.jsonl` format); for a two-line prompt,
its first line. The prediction and the 10 human answers are normalised as EvalAI does (see
vqa_answers.py) and the prediction gets the VQA soft score of its normal form (0 if no human gave it).
"""

from __future__ import annotations

import argparse
import re
from typing import Any

from mvlm.eval.scorers.common import ScoreError, id_key, read_answers, read_json, require_field
from mvlm.eval.scorers.vqa_answers import normalize_answer, soft_scores

NAME = "textvqa"
HELP = "TextVQA: VQA soft accuracy with EvalAI answer normalisation, percent"
DESCRIPTION = (
    __doc__
    + """
mvlm differs where the official script scores silently what it should not: annotated questions that
have no answer are an error (eval_textvqa.py averages over whatever answers exist), as are an answer
with no annotation and a prompt in none of the formats above (a KeyError/assert there).

--annotation-file is TextVQA_0.5.1_val.json (its 'data' list: image_id, question, answers).
"""
)

OCR_PROMPT_QUESTION = re.compile(r"Question: (.*?) Short answer:", re.DOTALL)
HUMAN_ANSWERS = 10


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--annotation-file", required=True, help="TextVQA_0.5.1_val.json")


def question_of_prompt(prompt: str) -> str:
    """The lowercased question inside a runner prompt (the formats of the module docstring)."""
    lines = prompt.split("\n")
    if prompt.startswith("OCR tokens: "):
        match = OCR_PROMPT_QUESTION.search(prompt)
        if match is None:
            raise ScoreError(
                f"prompt {prompt[:80]!r} starts with 'OCR tokens: ' but has no 'Question: ... Short answer:'"
            )
        question = match.group(1)
    elif "Reference OCR token: " in prompt and len(lines) == 3:
        question = lines[1] if prompt.startswith("Reference OCR token:") else lines[0]
    elif len(lines) == 2:
        question = lines[0]
    else:
        raise ScoreError(
            f"cannot find the question in prompt {prompt[:80]!r}; TextVQA prompts are "
            "'question\\nReference OCR token: ...\\ninstruction' or 'question\\ninstruction'"
        )
    return question.lower()


def score(answers: list[dict[str, Any]], annotation_file: str) -> dict[str, Any]:
    """{accuracy (percent), samples}."""
    data = require_field(read_json(annotation_file, "--annotation-file"), "data", annotation_file)
    annotations = {(id_key(a["image_id"]), a["question"].lower()): a for a in data}
    scores, answered = [], set()
    for answer in answers:
        key = (id_key(answer["question_id"]), question_of_prompt(str(answer.get("prompt", ""))))
        if key not in annotations:
            raise ScoreError(f"answer to {key[0]} question {key[1]!r} has no annotation in {annotation_file}")
        human = annotations[key]["answers"]
        if len(human) != HUMAN_ANSWERS:
            raise ScoreError(
                f"{annotation_file}: question {key} has {len(human)} answers, VQA accuracy needs {HUMAN_ANSWERS}"
            )
        answered.add(key)
        scores.append(soft_scores([normalize_answer(h) for h in human]).get(normalize_answer(str(answer["text"])), 0.0))
    missing = len(set(annotations) - answered)
    if missing or not scores:
        raise ScoreError(
            f"{missing} of the {len(annotations)} questions of {annotation_file} have no answer; "
            "finish the run or pass every chunk's answers file"
        )
    return {"accuracy": 100 * sum(scores) / len(scores), "samples": len(scores)}


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.annotation_file)
    print(f"Samples: {results['samples']}\nAccuracy: {results['accuracy']:.2f}%")
    return results
