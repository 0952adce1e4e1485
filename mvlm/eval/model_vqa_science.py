"""`python -m mvlm.eval.model_vqa_science`: answer ScienceQA in LLaVA's format (`llava_test_CQM-A.json`).

The question file is a JSON list of `{id, image?, conversations: [{from: human, value}, ...]}`; the first
human turn is the question (its `<image>` tag removed). As LLaVA does, `prompt` is written with
`<image>\\n` in front for questions with an image (the scorer's IMG subset), and --single-pred-prompt
appends the letter instruction to both the question and `prompt`. Answers: LLaVA's jsonl with
`question_id` = the sample's `id`.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.eval.runner import (
    SINGLE_PRED_PROMPT,
    Question,
    RunnerError,
    add_runner_arguments,
    runner_main,
    without_image_tags,
)


def question_from_sample(sample: dict, path: str, args: argparse.Namespace) -> Question:
    turns = sample.get("conversations") if isinstance(sample, dict) else None
    if "id" not in (sample if isinstance(sample, dict) else {}) or not turns or not isinstance(turns[0], dict) \
            or not isinstance(turns[0].get("value"), str):
        raise RunnerError(f"{path}: every entry needs an 'id' and 'conversations' whose first turn has a 'value'; "
                          f"got {str(sample)[:120]}")
    message = without_image_tags(turns[0]["value"]).strip()
    prompt = message
    image = sample.get("image")
    if image is not None:
        prompt = f"{DEFAULT_IMAGE_TOKEN}\n{prompt}"
    if args.single_pred_prompt:
        message = f"{message}\n{SINGLE_PRED_PROMPT}"
        prompt = f"{prompt}\n{SINGLE_PRED_PROMPT}"
    image_path = os.path.join(args.image_folder, image) if image is not None else None
    return Question(record={"question_id": sample["id"], "prompt": prompt, "text": None}, message=message,
                    image=image_path)


def read_questions(args: argparse.Namespace) -> list[list[Question]]:
    path = os.path.expanduser(args.question_file)
    if not os.path.isfile(path):
        raise RunnerError(f"question file {path} does not exist")
    try:
        with open(path, encoding="utf-8") as handle:
            samples = json.load(handle)
    except ValueError as error:
        raise RunnerError(f"{path} is not valid JSON ({error})") from error
    if not isinstance(samples, list):
        raise RunnerError(f"{path} must hold a JSON list of samples (LLaVA's llava_test_CQM-A.json format)")
    return [[question_from_sample(sample, path, args)] for sample in samples]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvlm.eval.model_vqa_science", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    add_runner_arguments(parser, max_new_tokens=1024)
    return parser


def main(argv: list[str] | None = None) -> int:
    return runner_main(build_parser(), read_questions, argv)


if __name__ == "__main__":
    sys.exit(main())
