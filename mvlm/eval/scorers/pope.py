"""POPE: yes/no object-hallucination questions in three splits (adversarial, popular, random).

Follows LLaVA's `llava/eval/eval_pope.py`: answers are split by the category their question has in
the question file, and paired with the labels of `coco_pope_<split>.json` BY POSITION (answers-file
order, not ids). An answer counts as "no" if, after keeping only the text before its first '.',
deleting ',' and splitting on single spaces, one of its words is `No`, `no` or `not`; anything else,
the empty answer included, counts as "yes".
"""

from __future__ import annotations

import argparse
import glob
import os
from typing import Any

from mvlm.eval.scorers.common import ScoreError, id_key, read_answers, read_jsonl, read_questions, require_field

NAME = "pope"
HELP = "POPE: accuracy/precision/recall/F1/yes-ratio per split, mean F1"
DESCRIPTION = (
    __doc__
    + """
mvlm differs from eval_pope.py in two places, both where the official script fails or misleads:
a split whose answers and labels differ in number is an error (the official zip() silently scores the
shorter prefix), and precision/recall/F1 are 0.0 when their denominator is 0 (a ZeroDivisionError
there).
"""
)

NO_WORDS = ("No", "no", "not")
LABEL_PREFIX, LABEL_SUFFIX = "coco_pope_", ".json"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--question-file", required=True, help="llava_pope_test.jsonl (gives each question's split as 'category')"
    )
    parser.add_argument(
        "--annotation-dir",
        required=True,
        help="folder of coco_pope_<split>.json label files (jsonl lines with 'label')",
    )


def answer_is_yes(text: str) -> bool:
    """POPE's reading of a free-form answer (see the module docstring)."""
    first_sentence = text.split(".")[0]
    words = first_sentence.replace(",", "").split(" ")
    return not any(word in NO_WORDS for word in words)


def split_metrics(predictions: list[bool], labels: list[bool]) -> dict[str, Any]:
    """Confusion counts and POPE's five numbers for one split; yes is the positive class."""
    pairs = list(zip(predictions, labels))
    true_pos = sum(said_yes and is_yes for said_yes, is_yes in pairs)
    false_pos = sum(said_yes and not is_yes for said_yes, is_yes in pairs)
    true_neg = sum(not said_yes and not is_yes for said_yes, is_yes in pairs)
    false_neg = sum(not said_yes and is_yes for said_yes, is_yes in pairs)
    precision = true_pos / (true_pos + false_pos) if true_pos + false_pos else 0.0
    recall = true_pos / (true_pos + false_neg) if true_pos + false_neg else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "accuracy": (true_pos + true_neg) / len(labels),
        "precision": precision,
        "recall": recall,
        "f1": f1,
        "yes_ratio": sum(predictions) / len(predictions),
        "counts": {"TP": true_pos, "FP": false_pos, "TN": true_neg, "FN": false_neg},
    }


def read_labels(path: str) -> list[bool]:
    """True for each 'yes' label, in file order (any label other than 'no' is yes, as in eval_pope.py)."""
    records, _ = read_jsonl(path, "POPE label file")
    return [require_field(record, "label", f"{path} line {number}") != "no" for number, record in enumerate(records, 1)]


def score(answers: list[dict[str, Any]], question_file: str, annotation_dir: str) -> dict[str, Any]:
    """{split: {accuracy, precision, recall, f1, yes_ratio, counts}} plus f1_mean over the splits."""
    questions = read_questions(question_file)
    category_of = {
        id_key(q["question_id"]): require_field(q, "category", f"{question_file} question {q.get('question_id')}")
        for q in questions
    }
    label_files = sorted(glob.glob(os.path.join(annotation_dir, LABEL_PREFIX + "*" + LABEL_SUFFIX)))
    if not label_files:
        raise ScoreError(f"--annotation-dir {annotation_dir} holds no {LABEL_PREFIX}<split>{LABEL_SUFFIX} files")
    for answer in answers:
        if id_key(answer["question_id"]) not in category_of:
            raise ScoreError(
                f"answer to question {answer['question_id']} has no question in {question_file}; "
                "were the answers made from another question file?"
            )

    results: dict[str, Any] = {}
    for label_file in label_files:
        split = os.path.basename(label_file)[len(LABEL_PREFIX) : -len(LABEL_SUFFIX)]
        labels = read_labels(label_file)
        if not labels:
            raise ScoreError(f"POPE label file {label_file} is empty")
        texts = [a["text"] for a in answers if category_of[id_key(a["question_id"])] == split]
        if len(texts) != len(labels):
            raise ScoreError(
                f"split '{split}': {len(texts)} answers but {len(labels)} labels in {label_file}; POPE pairs "
                "them by position, so every question of the split needs exactly one answer, in question order"
            )
        results[split] = split_metrics([answer_is_yes(text) for text in texts], labels)
    results["f1_mean"] = sum(results[split]["f1"] for split in results) / len(label_files)
    return results


def report(results: dict[str, Any]) -> list[str]:
    """The lines eval_pope.py prints for each split, then the mean F1."""
    lines = []
    for split, metrics in results.items():
        if split == "f1_mean":
            continue
        counts = metrics["counts"]
        lines += [
            f"Category: {split}, # samples: {sum(counts.values())}",
            "TP\tFP\tTN\tFN",
            f"{counts['TP']}\t{counts['FP']}\t{counts['TN']}\t{counts['FN']}",
            f"Accuracy: {metrics['accuracy']}",
            f"Precision: {metrics['precision']}",
            f"Recall: {metrics['recall']}",
            f"F1 score: {metrics['f1']}",
            f"Yes ratio: {metrics['yes_ratio']}",
            "%.3f, %.3f, %.3f, %.3f, %.3f"
            % (metrics["f1"], metrics["accuracy"], metrics["precision"], metrics["recall"], metrics["yes_ratio"]),
            "====================================",
        ]
    lines.append(f"F1 mean over {len(results) - 1} splits: {results['f1_mean']:.4f} ({results['f1_mean'] * 100:.2f})")
    return lines


def run(args: argparse.Namespace) -> dict[str, Any]:
    answers, _ = read_answers(args.answers)
    results = score(answers, args.question_file, args.annotation_dir)
    print("\n".join(report(results)))
    return results
