"""MME: yes/no questions, two per image, 10 perception and 4 cognition tasks.

Follows LLaVA's `convert_answer_to_mme.py` followed by the MME tool's `eval_tool/calculation.py`:
- the ground truth of an answer is found by (task, image file stem + '.txt', question), the question
  being the answer's prompt with `Answer the question using a single word or phrase.` removed and
  ` Please answer yes or no.` appended (or, when that is not in the ground truth, the two-space
  variant some MME files use);
- each task's answers become lines `image<TAB>question<TAB>gt<TAB>answer` in answers-file order, and
  the tool reads them back: the answer keeps its trailing newline, is lowercased, and is "yes" if
  exactly yes/no (never, given the newline), else "yes" if "yes" is in its first 4 characters, else
  "no" if "no" is, else "other" (always wrong). Consecutive lines pair up as one image's two
  questions: acc+ counts images with both right; task score = 100*acc + 100*acc+. A line that does
  not split into 4 fields (an answer with a tab) is skipped, as the tool does.
Perception is the sum of the 10 perception task scores, cognition of the 4 cognition ones.
"""

from __future__ import annotations

import argparse
import io
import os
from collections import defaultdict
from typing import Any

from mvlm.eval.scorers.common import ScoreError, id_key, read_answers, read_questions, require_all_answered

NAME = "mme"
HELP = "MME: acc and acc+ per task, perception and cognition sums"
DESCRIPTION = (
    __doc__
    + """
mvlm differs only where the official tools crash or misalign silently: a question without an answer,
an answer without a ground-truth line, and a task whose lines cannot pair up (an odd count, e.g. an
answer containing a line break) are errors naming the question or task.

--gt-dir is either the MME release folder (MME_Benchmark_release_version: <task>/ with per-image
.txt files, or <task>/questions_answers_YN/ next to <task>/images/) or a folder of <task>.txt files
with lines `image<TAB>question<TAB>Yes/No`.
"""
)

PERCEPTION_TASKS = ("existence", "count", "position", "color", "posters", "celebrity", "scene", "landmark",
                    "artwork", "OCR")
COGNITION_TASKS = ("commonsense_reasoning", "numerical_calculation", "text_translation", "code_reasoning")
SHORT_ANSWER_PROMPT = "Answer the question using a single word or phrase."
YES_NO_SUFFIX = " Please answer yes or no."

GroundTruth = dict[tuple[str, str, str], str]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--question-file", required=True, help="llava_mme.jsonl")
    parser.add_argument(
        "--gt-dir", required=True, help="MME release folder, or a folder of <task>.txt ground-truth files"
    )


def qa_file_name(image: str) -> str:
    """The per-image ground-truth file name MME uses: 'images/0001.png' -> '0001.txt' (stem up to the first '.')."""
    return image.split("/")[-1].split(".")[0] + ".txt"


def _split_gt_line(line: str, fields: int, where: str) -> list[str]:
    parts = line.strip().split("\t")
    if len(parts) != fields:
        raise ScoreError(f"{where}: expected {fields} tab-separated fields, found {len(parts)}")
    return parts


def load_ground_truth(gt_dir: str) -> GroundTruth:
    """{(task, '<image stem>.txt', question): 'Yes'|'No'} from either --gt-dir layout."""
    if not os.path.isdir(gt_dir):
        raise ScoreError(f"--gt-dir {gt_dir} is not a folder")
    truth: GroundTruth = {}
    flat_files = [
        task for task in PERCEPTION_TASKS + COGNITION_TASKS if os.path.isfile(os.path.join(gt_dir, task + ".txt"))
    ]
    if flat_files:
        for task in flat_files:
            path = os.path.join(gt_dir, task + ".txt")
            with open(path, encoding="utf-8") as handle:
                for number, line in enumerate(handle, 1):
                    if line.strip():
                        image, question, answer = _split_gt_line(line, 3, f"{path} line {number}")
                        truth[(task, qa_file_name(image), question)] = answer
        return truth
    for task in sorted(os.listdir(gt_dir)):
        task_dir = os.path.join(gt_dir, task)
        if not os.path.isdir(task_dir):
            continue
        qa_dir = (
            os.path.join(task_dir, "questions_answers_YN")
            if os.path.isdir(os.path.join(task_dir, "images"))
            else task_dir
        )
        if not os.path.isdir(qa_dir):
            raise ScoreError(f"--gt-dir: {task_dir} has images/ but no questions_answers_YN/ folder")
        for file_name in sorted(os.listdir(qa_dir)):
            if file_name.endswith(".txt"):
                path = os.path.join(qa_dir, file_name)
                with open(path, encoding="utf-8") as handle:
                    for number, line in enumerate(handle, 1):
                        question, answer = _split_gt_line(line, 2, f"{path} line {number}")
                        truth[(task, file_name, question)] = answer
    if not truth:
        raise ScoreError(f"--gt-dir {gt_dir} holds neither <task>.txt files nor MME task folders")
    return truth


def gt_question(prompt: str, task: str, file_name: str, truth: GroundTruth) -> str:
    """The ground-truth spelling of an answer's prompt (LLaVA's convert_answer_to_mme.py rule)."""
    question = prompt
    if SHORT_ANSWER_PROMPT in question:
        question = question.replace(SHORT_ANSWER_PROMPT, "").strip()
    if "Please answer yes or no." not in question:
        question = question + YES_NO_SUFFIX
        if (task, file_name, question) not in truth:
            question = question.replace(YES_NO_SUFFIX, " " + YES_NO_SUFFIX)
    return question


def parse_answer(answer_field: str) -> str:
    """calculation.py's reading of the lowercased last field of a result line (newline included)."""
    if answer_field in ("yes", "no"):
        return answer_field
    prefix = answer_field[:4]
    if "yes" in prefix:
        return "yes"
    if "no" in prefix:
        return "no"
    return "other"


def task_lines(answers: list[dict[str, Any]], truth: GroundTruth) -> dict[str, list[str]]:
    """Each task's result file as the official tools write and read it back (universal newlines)."""
    written: dict[str, list[str]] = defaultdict(list)
    for answer in answers:
        question_id = str(answer["question_id"])
        task, file_name = question_id.split("/")[0], qa_file_name(question_id)
        prompt = answer.get("prompt")
        if not isinstance(prompt, str):
            raise ScoreError(f"answer to {question_id} has no 'prompt' (MME finds the ground truth by the prompt)")
        question = gt_question(prompt, task, file_name, truth)
        if (task, file_name, question) not in truth:
            raise ScoreError(f"no ground truth for {question_id} question {question!r} in --gt-dir")
        written[task].append(
            "\t".join((file_name, question, truth[(task, file_name, question)], str(answer["text"]))) + "\n"
        )
    return {task: io.StringIO("".join(lines), newline=None).readlines() for task, lines in written.items()}


def task_metrics(lines: list[str], task: str) -> dict[str, float]:
    """acc, acc+ and score of one task from its result lines (pairs of consecutive lines = one image)."""
    if len(lines) % 2:
        raise ScoreError(
            f"task {task}: {len(lines)} result lines cannot pair up into images (two questions each); "
            "an answer containing a line break does this"
        )
    correct, total, images_both_right = 0, 0, 0
    for start in range(0, len(lines), 2):
        right_in_image = 0
        for line in lines[start : start + 2]:
            fields = line.split("\t")
            if len(fields) != 4:
                continue  # calculation.py prints such a line and skips it
            gt, predicted = fields[2].lower(), parse_answer(fields[3].lower())
            if gt not in ("yes", "no"):
                raise ScoreError(f"task {task}: ground truth {fields[2]!r} is neither Yes nor No")
            total += 1
            correct += gt == predicted
            right_in_image += gt == predicted
        images_both_right += right_in_image == 2
    acc = correct / total if total else 0.0
    acc_plus = images_both_right / (len(lines) // 2)
    return {"score": acc * 100 + acc_plus * 100, "acc": acc, "acc_plus": acc_plus}


def score(answers: list[dict[str, Any]], question_file: str, gt_dir: str) -> dict[str, Any]:
    """{perception, cognition, tasks: {task: {score, acc, acc_plus}}}."""
    questions = read_questions(question_file)
    require_all_answered(
        [_question_key(q, "text") for q in questions], [_question_key(a, "prompt") for a in answers], question_file
    )
    lines = task_lines(answers, load_ground_truth(gt_dir))
    for task in PERCEPTION_TASKS + COGNITION_TASKS:
        if task not in lines:
            raise ScoreError(f"no answers for MME task {task}; the MME sums need all 14 tasks")
    tasks = {task: task_metrics(lines[task], task) for task in PERCEPTION_TASKS + COGNITION_TASKS}
    return {
        "perception": sum(tasks[task]["score"] for task in PERCEPTION_TASKS),
        "cognition": sum(tasks[task]["score"] for task in COGNITION_TASKS),
        "tasks": tasks,
    }


def _question_key(record: dict[str, Any], text_field: str) -> str:
    """An MME id names an image, which has two questions: a question is its id and text (an answer's prompt)."""
    return f"{id_key(record['question_id'])} {record.get(text_field)!r}"


def report(results: dict[str, Any]) -> list[str]:
    lines = []
    for title, task_names, total in (
        ("Perception", PERCEPTION_TASKS, results["perception"]),
        ("Cognition", COGNITION_TASKS, results["cognition"]),
    ):
        lines += [f"=========== {title} ===========", f"total score: {total:.2f}", ""]
        for task in task_names:
            metrics = results["tasks"][task]
            lines.append(
                f"\t {task}  score: {metrics['score']:.2f} (acc {metrics['acc']:.4f}, acc+ {metrics['acc_plus']:.4f})"
            )
        lines.append("")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.question_file, args.gt_dir)
    print("\n".join(report(results)))
    return results
