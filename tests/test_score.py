"""Scorers: the published LLaVA-1.5-13B numbers from real answer files, and every official quirk on
hand-made fixtures whose expected scores are worked out in the comments. ~10 s, most of it the one
subprocess (importing mvlm); the scoring itself takes about 2 s.
"""

from __future__ import annotations

import csv
import json
import os
import random
import subprocess
import sys

import pytest

from mvlm.eval import score as score_cli
from mvlm.eval.scorers import exact, gqa, mmbench, mme, mmmu, pope, scienceqa, seed, textvqa
from mvlm.eval.scorers.common import read_answers
from mvlm.eval.scorers.vqa_answers import normalize_answer, soft_scores

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = os.path.join(os.path.dirname(REPO_ROOT), "shared", "eval-reference")
SCRIPTS = os.path.join(REPO_ROOT, "scripts", "eval")


@pytest.fixture(scope="module")
def reference() -> str:
    """The real answer files; CI keeps shared/ beside the repository, so their absence is a failure."""
    assert os.path.isdir(REFERENCE), f"{REFERENCE} is missing: the scorer tests need shared/eval-reference"
    return REFERENCE


def write_jsonl(path, records) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        for record in records:
            handle.write(json.dumps(record) + "\n")
    return str(path)


def write_json(path, data) -> str:
    with open(path, "w", encoding="utf-8") as handle:
        json.dump(data, handle)
    return str(path)


# ---------------------------------------------------------------- published numbers (real LLaVA-1.5-13B answers)


def test_pope_reference_numbers_through_the_cli(reference, tmp_path):
    out = tmp_path / "pope.json"
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "mvlm.eval.score",
            "pope",
            "--answers",
            f"{reference}/pope/answers/llava-v1.5-13b.jsonl",
            "--question-file",
            f"{reference}/pope/llava_pope_test.jsonl",
            "--annotation-dir",
            f"{reference}/pope/coco",
            "--json",
            str(out),
        ],
        capture_output=True,
        text=True,
        cwd=REPO_ROOT,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert "F1 mean over 3 splits: 0.8595 (85.95)" in result.stdout
    assert "0.845, 0.855, 0.910, 0.788, 0.433" in result.stdout  # eval_pope.py's summary line, adversarial
    metrics = json.loads(out.read_text())
    published = {
        "adversarial": (0.8446, 0.855, 0.433),
        "popular": (0.8625, 0.874, 0.414),
        "random": (0.8714, 0.880, 0.417),
    }
    for split, (f1, accuracy, yes_ratio) in published.items():
        assert round(metrics[split]["f1"], 4) == f1
        assert round(metrics[split]["accuracy"], 3) == accuracy
        assert round(metrics[split]["yes_ratio"], 3) == yes_ratio
        assert set(metrics[split]) >= {"accuracy", "precision", "recall", "f1", "yes_ratio"}
    assert round(metrics["f1_mean"] * 100, 2) == 85.95


def test_mme_reference_numbers(reference):
    answers, _ = read_answers([f"{reference}/mme/answers/llava-v1.5-13b.jsonl"])
    results = mme.score(answers, f"{reference}/mme/llava_mme.jsonl", f"{reference}/mme/ground_truth")
    assert round(results["perception"], 2) == 1531.32
    assert round(results["cognition"], 2) == 295.36
    assert len(results["tasks"]) == 14 and set(results["tasks"]["OCR"]) == {"score", "acc", "acc_plus"}


def test_scienceqa_reference_numbers(reference):
    answers, _ = read_answers([f"{reference}/scienceqa/answers/llava-v1.5-13b.jsonl"])
    results = scienceqa.score(answers, f"{reference}/scienceqa", "test")
    assert (results["total"], results["correct"]) == (4241, 3155)
    assert (round(results["acc"], 2), round(results["img_acc"], 2)) == (74.39, 71.64)


def test_mmbench_dev_reference_circular_accuracy(reference, capsys):
    metrics = score_cli.main(
        [
            "mmbench",
            "--answers",
            f"{reference}/mmbench/answers/llava-v1.5-13b.jsonl",
            "--question-file",
            f"{reference}/mmbench/mmbench_dev_20230712_noimages.tsv",
        ]
    )
    assert round(metrics["circular_accuracy"], 2) == 67.69
    assert "Circular accuracy: 67.69%" in capsys.readouterr().out


# ---------------------------------------------------------------- POPE quirks


def test_pope_answer_reading():
    # 'no' only as the exact words No/no/not in the first sentence, split on single spaces, commas deleted
    assert not pope.answer_is_yes("No")
    assert not pope.answer_is_yes("no.")
    assert not pope.answer_is_yes("There is not a dog.")
    assert not pope.answer_is_yes("Yes, but no")  # the 'no' at the end counts
    assert pope.answer_is_yes("Yes. No.")  # only the first sentence is read
    assert pope.answer_is_yes("NO") and pope.answer_is_yes("Not at all")  # case-sensitive
    assert pope.answer_is_yes("No\n")  # the word is 'No\n'
    assert pope.answer_is_yes("")


def test_pope_pairs_answers_with_labels_by_position(tmp_path):
    labels = tmp_path / "coco"
    labels.mkdir()
    write_jsonl(
        labels / "coco_pope_random.json",
        [{"question_id": i, "label": label} for i, label in zip(range(1, 5), ["yes", "no", "yes", "no"])],
    )
    write_jsonl(
        labels / "coco_pope_popular.json", [{"question_id": 5, "label": "yes"}, {"question_id": 6, "label": "no"}]
    )
    questions = write_jsonl(
        tmp_path / "q.jsonl", [{"question_id": i, "category": "random" if i <= 4 else "popular"} for i in range(1, 7)]
    )
    # answers-file order 1, 2, 4, 3: position 3 (label yes) gets q4's "NO" (read as yes) -> TP,
    # position 4 (label no) gets q3's "Yes, but no" (read as no) -> TN. Random: TP 2, TN 2 -> all 1.0, yes ratio 0.5
    # (pairing by id would give accuracy 0.5). Popular: q5 "Yes" TP, q6 "Not sure" read as yes -> FP:
    # accuracy 0.5, precision 0.5, recall 1.0, F1 2*0.5*1/1.5 = 2/3, yes ratio 1.0. Mean F1 (1 + 2/3) / 2 = 5/6.
    answers = [
        {"question_id": 1, "text": "Yes"},
        {"question_id": 2, "text": "No"},
        {"question_id": 4, "text": "NO"},
        {"question_id": 3, "text": "Yes, but no"},
        {"question_id": 5, "text": "Yes"},
        {"question_id": 6, "text": "Not sure"},
    ]
    results = pope.score(answers, questions, str(labels))
    assert results["random"]["counts"] == {"TP": 2, "FP": 0, "TN": 2, "FN": 0}
    assert (results["random"]["accuracy"], results["random"]["f1"], results["random"]["yes_ratio"]) == (1.0, 1.0, 0.5)
    popular = results["popular"]
    assert (popular["accuracy"], popular["precision"], popular["recall"], popular["yes_ratio"]) == (0.5, 0.5, 1.0, 1.0)
    assert popular["f1"] == pytest.approx(2 / 3) and results["f1_mean"] == pytest.approx(5 / 6)
    with pytest.raises(pope.ScoreError, match="split 'random': 3 answers but 4 labels"):
        pope.score(answers[:3] + answers[4:], questions, str(labels))
    no_ids = write_jsonl(tmp_path / "no-ids.jsonl", [{"category": "random"}])
    with pytest.raises(pope.ScoreError, match="no-ids.jsonl line 1"):
        pope.score(answers, no_ids, str(labels))


def test_pope_zero_denominators_are_defined():
    # no 'yes' predicted: TP + FP = 0 -> precision 0.0 (eval_pope.py raises ZeroDivisionError), F1 0.0
    metrics = pope.split_metrics([False, False], [True, False])
    assert (metrics["precision"], metrics["recall"], metrics["f1"], metrics["accuracy"]) == (0.0, 0.0, 0.0, 0.5)


# ---------------------------------------------------------------- MME quirks


def test_mme_answer_parsing_keeps_the_newline():
    assert mme.parse_answer("yes\n") == "yes" and mme.parse_answer("no, it is not\n") == "no"
    assert mme.parse_answer("  no\n") == "no"  # 'no' within the first 4 characters
    assert mme.parse_answer("  yes\n") == "other"  # '  ye' holds neither
    assert mme.parse_answer("the answer is yes\n") == "other"
    assert mme.parse_answer("nope\n") == "no" and mme.parse_answer("y\n") == "other"


def test_mme_task_score_pairs_lines_and_finds_the_double_space_ground_truth():
    truth = {
        ("color", "0001.txt", "Is it red? Please answer yes or no."): "Yes",
        ("color", "0001.txt", "Is it blue?  Please answer yes or no."): "No",  # two spaces, as in some MME files
        ("color", "0002.txt", "Is it green? Please answer yes or no."): "No",
        ("color", "0002.txt", "Is it pink? Please answer yes or no."): "Yes",
    }
    suffix = "\nAnswer the question using a single word or phrase."

    def answer(image, question, text):
        return {"question_id": f"color/{image}", "prompt": question + suffix, "text": text}

    answers = [
        answer("0001.png", "Is it red?", "Yes"),
        answer("0001.png", "Is it blue?", "No, it is not"),
        answer("0002.png", "Is it green?", "  no"),
        answer("0002.png", "Is it pink?", "The answer is yes"),
    ]
    # right, right, right ('  no' -> no), wrong ('the ' -> other): acc 3/4; image 0001 both right, 0002 not:
    # acc+ 1/2; score 75 + 50 = 125
    lines = mme.task_lines(answers, truth)["color"]
    assert lines[1] == "0001.txt\tIs it blue?  Please answer yes or no.\tNo\tNo, it is not\n"
    assert mme.task_metrics(lines, "color") == {"score": 125.0, "acc": 0.75, "acc_plus": 0.5}
    # an answer with a tab: its line does not split into 4 fields and is skipped (acc 3/3), its image
    # cannot be both right (acc+ 1/2): 100 + 50
    answers[3]["text"] = "Yes\tsure"
    assert mme.task_metrics(mme.task_lines(answers, truth)["color"], "color")["score"] == 150.0
    answers[3]["text"] = "Yes\nNo"  # a line break: 5 lines cannot pair up
    with pytest.raises(mme.ScoreError, match="cannot pair up"):
        mme.task_metrics(mme.task_lines(answers, truth)["color"], "color")


def test_mme_reads_both_ground_truth_layouts(tmp_path):
    flat = tmp_path / "flat"
    flat.mkdir()
    (flat / "artwork.txt").write_text("10002.jpg\tIs it a painting? Please answer yes or no.\tYes\n")
    release = tmp_path / "release"
    (release / "artwork" / "questions_answers_YN").mkdir(parents=True)
    (release / "artwork" / "images").mkdir()
    (release / "artwork" / "questions_answers_YN" / "10002.txt").write_text(
        "Is it a painting? Please answer yes or no.\tYes\n"
    )
    (release / "OCR").mkdir()
    (release / "OCR" / "0001.jpg").write_bytes(b"")
    (release / "OCR" / "0001.txt").write_text("Is the word 'a'? Please answer yes or no.\tNo\n")
    assert mme.load_ground_truth(str(flat)) == {
        ("artwork", "10002.txt", "Is it a painting? Please answer yes or no."): "Yes"
    }
    assert mme.load_ground_truth(str(release)) == {
        ("artwork", "10002.txt", "Is it a painting? Please answer yes or no."): "Yes",
        ("OCR", "0001.txt", "Is the word 'a'? Please answer yes or no."): "No",
    }


# ---------------------------------------------------------------- ScienceQA quirks


def test_scienceqa_option_parsing():
    assert scienceqa.parse_option("A") == "A" and scienceqa.parse_option("B. a dog") == "B"
    assert scienceqa.parse_option("The answer is C.") == "C"
    assert scienceqa.parse_option("Because ... The answer is D!") == "D"  # any character after the letter
    assert scienceqa.parse_option("The answer is C") == "FAILED"  # nothing after the letter
    assert scienceqa.parse_option("The answer is A. The answer is B.") == "FAILED"  # two matches
    assert scienceqa.parse_option(" A") == "FAILED" and scienceqa.parse_option("a") == "FAILED"
    assert scienceqa.option_index("E", 3) == -1 and scienceqa.option_index("C", 3) == 2


def test_scienceqa_counts_missing_answers_and_splits_by_image_prompt(tmp_path):
    write_json(tmp_path / "pid_splits.json", {"test": ["1", "2", "3", "4"], "val": ["9"]})
    write_json(
        tmp_path / "problems.json",
        {
            str(i): {"choices": ["x", "y", "z"], "answer": a}
            for i, a in [("1", 1), ("2", 0), ("3", 2), ("4", 2), ("9", 0)]
        },
    )
    answers = [
        {"question_id": "1", "prompt": "<image>\nQ", "text": "B"},  # right, image
        {"question_id": "2", "prompt": "Q", "text": "The answer is A."},  # right
        {"question_id": 4, "prompt": "<image>\nQ", "text": "D"},
    ]  # D beyond 3 choices: wrong, image
    # question 3 unanswered: FAILED. acc 2/4 = 50%, IMG 1/2 = 50% (3 has no prompt, so it is not an image question)
    assert scienceqa.score(answers, str(tmp_path)) == {
        "acc": 50.0,
        "img_acc": 50.0,
        "correct": 2,
        "total": 4,
        "img_correct": 1,
        "img_total": 2,
    }


# ---------------------------------------------------------------- VQA normalisation, TextVQA, VQAv2, VizWiz


@pytest.mark.parametrize(
    "raw, normal",
    [
        ("Two.", "2"),  # number word, final period
        ("Dont", "don't"),  # contraction table
        ("A Coca-Cola!", "coca cola"),  # '-' and '!' not touching a space become spaces, article dropped
        ("hello - world", "hello world"),  # ' - ' touches a space: deleted
        ("a/b", "b"),  # '/' -> space, then 'a' is an article
        ("3.5", "3.5"),  # a period before a digit stays
        ("Joe's", "joe 's"),
        ("none", "0"),
        ("yall'll", "y'all'll"),
        ("." * 40 + "x", "." * 8 + "x"),  # at most 32 periods are deleted
        ("  The\tEnd\n", "end"),
    ],
)
def test_evalai_answer_normalisation(raw, normal):
    assert normalize_answer(raw) == normal


def test_vqa_soft_accuracy_over_leave_one_out_subsets():
    # an answer given by k of 10 humans: mean over the 10 subsets of 9 of min(matches/3, 1):
    # k=1: 9 subsets with 1 match -> 9*(1/3)/10 = 0.3; k=2: (2*(1/3) + 8*(2/3))/10 = 0.6;
    # k=3: (3*(2/3) + 7*1)/10 = 0.9; k=4: 1.0
    scores = soft_scores(["a"] + ["b"] * 2 + ["c"] * 3 + ["d"] * 4)
    assert scores == pytest.approx({"a": 0.3, "b": 0.6, "c": 0.9, "d": 1.0})


def test_textvqa_accuracy(tmp_path):
    def item(image, question, answers):
        return {"image_id": image, "question": question, "answers": answers}

    annotation = write_json(
        tmp_path / "val.json",
        {
            "data": [
                item("i1", "How many bottles are there?", ["2", "two", "Two.", "3", "3", "3", "3", "three", "3", "3"]),
                item("i2", "What does the sign say?", ["dont walk", "don't walk"] + ["stop"] * 8),
                item("i3", "What brand is it?", ["coca cola"] + ["pepsi"] * 9),
                item("i4", "Whose bike is it?", ["joe's"] * 4 + ["joes"] * 6),
                item("i5", "Is it open?", ["yes"] * 10),
            ]
        },
    )
    ocr, short = "\nReference OCR token: a, b\n", "\nAnswer the question using a single word or phrase."
    answers = [
        {
            "question_id": "i1",
            "prompt": "How many bottles are there?" + ocr + short[1:],
            "text": "Two.",
        },  # '2': 3 of 10 -> 0.9
        {
            "question_id": "i2",
            "prompt": "What does the sign say?" + short,
            "text": "Dont walk",
        },  # "don't walk": 2 -> 0.6
        {"question_id": "i3", "prompt": "What brand is it?" + short, "text": "A Coca-Cola!"},  # 'coca cola': 1 -> 0.3
        {"question_id": "i4", "prompt": "Whose bike is it?" + short, "text": "Joe's"},  # "joe 's": 4 -> 1.0
        {"question_id": "i5", "prompt": "Is it open?" + short, "text": "no"},
    ]  # 0
    # (0.9 + 0.6 + 0.3 + 1.0 + 0) / 5 = 0.56
    results = textvqa.score(answers, annotation)
    assert results["samples"] == 5 and results["accuracy"] == pytest.approx(56.0)
    assert textvqa.question_of_prompt("OCR tokens: a b Question: What is it? Short answer:") == "what is it?"
    with pytest.raises(textvqa.ScoreError, match="1 of the 5 questions"):
        textvqa.score(answers[:4], annotation)


def test_vqav2_upload_file(tmp_path, capsys):
    questions = write_jsonl(tmp_path / "test2015.jsonl", [{"question_id": i, "text": "?"} for i in (1, 2, 3, 4)])
    chunk0 = write_jsonl(
        tmp_path / "2_0.jsonl", [{"question_id": 1, "text": "Two"}, {"question_id": 2, "text": "Yes."}]
    )
    chunk1 = tmp_path / "2_1.jsonl"
    chunk1.write_text(
        json.dumps({"question_id": "4", "text": "A dog"}) + '\n{"question_id": 3, "te\n'
    )  # killed mid-line
    upload = tmp_path / "upload" / "llava.json"
    metrics = score_cli.main(
        ["vqav2", "--answers", chunk0, str(chunk1), "--question-file", questions, "--upload", str(upload)]
    )
    # question 3's line is malformed (skipped and counted): its answer is ""; "A dog" -> "dog"
    expected = [
        {"question_id": 1, "answer": "2"},
        {"question_id": 2, "answer": "yes"},
        {"question_id": 3, "answer": ""},
        {"question_id": 4, "answer": "dog"},
    ]
    assert upload.read_text() == json.dumps(expected)
    assert (metrics["malformed_lines"], metrics["answered"], metrics["questions"]) == (1, 3, 4)
    assert "total results: 3, total split: 4, error_line: 1" in capsys.readouterr().out


def test_vizwiz_upload_file_needs_every_answer(tmp_path, capsys):
    questions = write_jsonl(
        tmp_path / "llava_test.jsonl",
        [
            {"question_id": 0, "image": "VizWiz_test_00000000.jpg"},
            {"question_id": 1, "image": "VizWiz_test_00000001.jpg"},
        ],
    )
    answers = write_jsonl(
        tmp_path / "a.jsonl", [{"question_id": 1, "text": "Unanswerable"}, {"question_id": 0, "text": "Blue."}]
    )
    upload = tmp_path / "vizwiz.json"
    score_cli.main(["vizwiz", "--answers", answers, "--question-file", questions, "--upload", str(upload)])
    assert json.loads(upload.read_text()) == [
        {"image": "VizWiz_test_00000000.jpg", "answer": "blue"},
        {"image": "VizWiz_test_00000001.jpg", "answer": "unanswerable"},
    ]
    partial = write_jsonl(tmp_path / "partial.jsonl", [{"question_id": 0, "text": "Blue."}])
    with pytest.raises(SystemExit) as stopped:
        score_cli.main(
            ["vizwiz", "--answers", partial, "--question-file", questions, "--upload", str(tmp_path / "x.json")]
        )
    assert stopped.value.code == 1
    error = capsys.readouterr().err
    assert error.count("\n") == 1 and "1 questions of" in error and "have no answer" in error
    assert not (tmp_path / "x.json").exists()


# ---------------------------------------------------------------- GQA, SEED, MMMU


def test_gqa_exact_match_after_llava_normalisation(tmp_path):
    questions = write_json(
        tmp_path / "testdev_balanced_questions.json",
        {
            "q1": {"answer": "yes", "isBalanced": True},
            "q2": {"answer": "table", "isBalanced": True},
            "q3": {"answer": "red", "isBalanced": True},
            "q4": {"answer": "left", "isBalanced": False},
            "q5": {"answer": "cat", "isBalanced": True},
        },
    )
    answers = [
        {"question_id": "q1", "text": "Yes."},  # 'yes': right
        {"question_id": "q2", "text": "Table.."},  # every trailing '.' goes: right
        {"question_id": "q3", "text": " red"},  # no whitespace strip: wrong
        {"question_id": "q5", "text": "The cat"},
    ]  # 'the cat': wrong; q4 is not balanced, needs no answer
    assert gqa.score(answers, questions) == {"accuracy": 50.0, "samples": 4}
    with pytest.raises(gqa.ScoreError, match="have no answer"):
        gqa.score(answers[1:], questions)


def test_seed_exact_letter_accuracy_per_type(tmp_path):
    def question(qid, type_id, data_type, answer):
        return {"question_id": qid, "question_type_id": type_id, "data_type": data_type, "answer": answer}

    annotation = write_json(
        tmp_path / "SEED-Bench.json",
        {
            "question_type": {"Scene Understanding": 1, "Instance Identity": 2, "Action Recognition": 10},
            "questions": [
                question("101", 1, "image", "A"),
                question("102", 1, "image", "B"),
                question("107", 1, "image", "C"),
                question("103", 2, "image", "C"),
                question("104", 2, "image", "D"),
                question("105", 10, "video", "A"),
                question("106", 10, "video", "B"),
            ],
        },
    )
    answers = [
        {"question_id": 101, "text": "A"},
        {"question_id": 102, "text": "B."},
        {"question_id": 107, "text": "C"},
        {"question_id": 103, "text": "C"},
        {"question_id": 105, "text": "a"},
        {"question_id": 106, "text": "B"},
    ]
    # right: 101, 107, 103, 106; wrong: 102 ('B.'), 105 ('a'), 104 (no answer). Percent, as SEED is reported
    assert seed.score(answers, annotation) == {
        "accuracy": 4 / 7 * 100,  # computed as LLaVA's script does
        "per_type": {"Scene Understanding": 2 / 3 * 100, "Instance Identity": 50.0, "Action Recognition": 50.0},
        "per_data_type": {"image": 60.0, "video": 50.0},
    }


def test_seed_prints_and_writes_percent_through_the_cli(tmp_path, capsys):
    annotation = write_json(
        tmp_path / "SEED-Bench.json",
        {
            "question_type": {"Scene Understanding": 1, "Action Recognition": 10},
            "questions": [
                {"question_id": 1, "question_type_id": 1, "data_type": "image", "answer": "A"},
                {"question_id": 2, "question_type_id": 1, "data_type": "image", "answer": "B"},
                {"question_id": 3, "question_type_id": 10, "data_type": "video", "answer": "C"},
                {"question_id": 4, "question_type_id": 10, "data_type": "video", "answer": "D"},
            ],
        },
    )
    answers = write_jsonl(tmp_path / "a.jsonl", [{"question_id": i, "text": t} for i, t in enumerate("ABCA", 1)])
    out = tmp_path / "scores.json"
    metrics = score_cli.main(["seed", "--answers", answers, "--question-file", annotation, "--json", str(out)])
    # right: 1, 2, 3; wrong: 4 -> 75% in total, 100% image (SEED-IMG), 50% video
    expected = {
        "accuracy": 75.0,
        "per_type": {"Scene Understanding": 100.0, "Action Recognition": 50.0},
        "per_data_type": {"image": 100.0, "video": 50.0},
    }
    assert metrics == expected and json.loads(out.read_text()) == expected
    assert capsys.readouterr().out.splitlines() == [
        "Scene Understanding: 100.00%",
        "Action Recognition: 50.00%",
        "Total accuracy: 75.00%",
        "image accuracy: 100.00%",
        "video accuracy: 50.00%",
    ]


def test_mmmu_answer_parsing(tmp_path):
    options = ["cat", "dog", "bird", "fish"]

    def choice(qid, answer, text):
        return (
            {
                "question_id": qid,
                "id": f"validation_Art_{qid}",
                "question_type": "multiple-choice",
                "options": options if qid != 5 else str(options),
                "answer": answer,
            },
            {"question_id": qid, "text": text},
        )

    def open_question(qid, answer, text):
        return {
            "question_id": qid,
            "id": f"validation_Math_{qid}",
            "question_type": "open",
            "options": [],
            "answer": answer,
        }, {"question_id": qid, "text": text}

    # the fallback draws of random.Random(42) over 4 options, as MMMU's module-level random.seed(42) gives
    draws = random.Random(42)
    first_draw, second_draw = draws.choice("ABCD"), draws.choice("ABCD")
    pairs = [
        choice(1, "B", "(B) dog"),  # bracketed letter: right
        choice(2, "C", "I think the answer is C."),  # ' C ' after stripping the '.': right
        choice(3, "A", "The animal in the picture is clearly a dog"),  # >5 words, option text 'dog' -> B: wrong
        choice(4, "C", "(A) or maybe (C)"),  # two candidates, the last written wins: right
        choice(5, first_draw, "no idea"),  # nothing found: first seeded draw (options given as a string): right
        choice(6, "ABCD".replace(second_draw, "")[0], "hmm"),  # second draw differs from the gold: wrong
        open_question(7, "24", "The total is 24.0 dollars."),  # tail after 'is ' holds 24.0 = 24: right
        open_question(8, "paris", "It is Paris"),  # 'paris' inside the tail: right
        open_question(9, "3.14", "The value = 3.1"),  # 3.1 != 3.14: wrong
        open_question(10, "['1/2', '0.5']", "0.50"),  # list gold in string form; 0.5 matches: right
    ]
    questions = write_jsonl(tmp_path / "mmmu.jsonl", [q for q, _ in pairs])
    results = mmmu.score([a for _, a in pairs], questions)
    assert results == {"accuracy": 7 / 10, "samples": 10}  # right: 1, 2, 4, 5, 7, 8, 10
    assert mmmu.parse_choice("The animal in the picture is clearly a dog", options, random.Random(0)) == "B"
    assert sorted(mmmu.parse_open("The total is 24.0 dollars."), key=str) == [24.0, "24.0 dollars"]


# ---------------------------------------------------------------- exact (your own question sets)


def test_exact_match_accuracy_per_category_through_the_cli(tmp_path, capsys):
    labels = write_jsonl(tmp_path / "labels.jsonl", [
        {"question_id": 0, "answer": "red", "category": "color"},
        {"question_id": 1, "answer": "blue", "category": "color"},
        {"question_id": 2, "answer": "top left", "category": "position"},
        {"question_id": 3, "answer": "3", "category": "count"},
        {"question_id": 4, "answer": "yes"},
    ])
    answers = write_jsonl(tmp_path / "answers.jsonl", [
        {"question_id": 0, "text": " Red. "},  # case, spaces and a trailing '.' do not count: right
        {"question_id": "1", "text": "a blue one"},  # string id matches 1; not the exact answer: wrong
        {"question_id": 2, "text": "Top left"},  # right
        {"question_id": 3, "text": "3.."},  # only one '.' goes: '3.' is wrong
        {"question_id": 4, "text": "yes"},  # right, in the category of labels without one
        {"question_id": 9, "text": "red"},  # no label: ignored
    ])
    out = tmp_path / "scores.json"
    metrics = score_cli.main(["exact", "--answers", answers, "--annotation-file", labels, "--json", str(out)])
    assert metrics == {
        "accuracy": 3 / 5,
        "per_category": {"color": 1 / 2, "position": 1.0, "count": 0.0, "(none)": 1.0},
        "counts": {"color": 2, "position": 1, "count": 1, "(none)": 1},
        "correct": 3,
        "total": 5,
    }
    assert json.loads(out.read_text()) == metrics
    assert capsys.readouterr().out.splitlines() == [
        "color: 50.00% of 2", "position: 100.00% of 1", "count: 0.00% of 1", "(none): 100.00% of 1",
        "Total accuracy: 60.00% (3 of 5)",
    ]


def test_exact_match_refuses_unanswered_and_duplicate_labels(tmp_path):
    labels = [{"question_id": 0, "answer": "red"}, {"question_id": 1, "answer": "blue"}]
    with pytest.raises(exact.ScoreError, match="1 questions of .* have no answer"):
        exact.score([{"question_id": 0, "text": "red"}], write_jsonl(tmp_path / "labels.jsonl", labels))
    duplicated = write_jsonl(tmp_path / "twice.jsonl", labels + [{"question_id": "1", "answer": "green"}])
    with pytest.raises(exact.ScoreError, match="line 3: question_id 1 appears twice"):
        exact.score([], duplicated)


# ---------------------------------------------------------------- MMBench


# One test per step of VLMEvalKit's can_infer (vlmeval/utils/matching_util.py): can_infer_option, then
# can_infer_text when it finds no letter. The expected letters are what VLMEvalKit returns (None: its False).
CAT_DOG = {"A": "cat", "B": "dog"}
FOUR = {"A": "cat", "B": "dog", "C": "bird", "D": "fish"}


def test_mmbench_a_failed_api_call_names_no_letter():
    # the letter step gives up at once; the option-text step finds nothing in so long an answer
    assert mmbench.infer_letter("Failed to obtain answer via API. B", CAT_DOG) is None
    assert mmbench.infer_letter("B", CAT_DOG) == "B"


def test_mmbench_refusals_read_as_z_before_any_letter():
    assert mmbench.infer_letter("Cannot determine the answer", CAT_DOG) == "Z"
    assert mmbench.infer_letter("I'm sorry, but without the image provided, B", CAT_DOG) == "Z"
    assert mmbench.infer_letter("Sorry, I can't help with images of people yet. A", CAT_DOG) == "Z"
    assert mmbench.infer_letter("I can't process this file. A", CAT_DOG) == "Z"


def test_mmbench_only_the_listed_punctuation_separates_a_letter():
    assert mmbench.infer_letter("(B) a dog.", CAT_DOG) == "B"
    assert mmbench.infer_letter("[B]!", CAT_DOG) == "B" and mmbench.infer_letter("**B**", CAT_DOG) == "B"
    assert mmbench.infer_letter("B?", CAT_DOG) is None  # '?' is not replaced: the word is 'B?'
    assert mmbench.infer_letter("B-", CAT_DOG) is None


def test_mmbench_exactly_one_option_letter_as_a_word():
    assert mmbench.infer_letter("A dog", CAT_DOG) == "A"  # the article reads as option A
    assert mmbench.infer_letter("A or B", CAT_DOG) is None  # two letters, no 'answer is', no option text
    assert mmbench.infer_letter("b", CAT_DOG) is None  # letters are case-sensitive


def test_mmbench_the_letter_must_first_appear_in_the_last_four_words():
    # VLMEvalKit: splits.index(letter) > len(splits) - 5, the first occurrence among the last 4 words
    assert mmbench.infer_letter("B is the answer", CAT_DOG) == "B"  # 4 words, B is word 1 of the last 4
    assert mmbench.infer_letter("Option B is correct here", CAT_DOG) == "B"  # 5 words, B is the 2nd
    assert mmbench.infer_letter("B is my final choice", CAT_DOG) is None  # 5 words, B is the 1st
    assert mmbench.infer_letter("B, well, I would say B", CAT_DOG) is None  # its first occurrence counts


def test_mmbench_a_lone_z_reads_as_z_before_the_answer_is_pattern():
    assert mmbench.infer_letter("Z", CAT_DOG) == "Z"
    assert mmbench.infer_letter("Z; the answer is b", CAT_DOG) == "Z"  # no option letter as a word, one Z
    assert mmbench.infer_letter("A or Z", CAT_DOG) == "A"  # an option letter wins over Z


def test_mmbench_answer_is_pattern_when_the_letter_words_are_ambiguous():
    assert mmbench.infer_letter("A cat is sitting on the mat, so the answer is B", FOUR) == "B"  # A and B are words
    assert mmbench.infer_letter("B seems likely, but the correct answer is **c**", FOUR) == "C"  # B too early
    assert mmbench.infer_letter("A or B? The answer is D", CAT_DOG) is None  # D is not an option here
    assert mmbench.infer_letter("A or B? The answer is because it purrs", FOUR) == "B"  # no word boundary


def test_mmbench_option_text_only_in_answers_at_most_twice_the_options_length():
    # options 'cat' + 'dog': 6 characters, so answers of at most 12 characters are searched for an option's text
    assert mmbench.infer_letter("it is a dog!", CAT_DOG) == "B"  # 12 characters
    assert mmbench.infer_letter("It is a dog!!", CAT_DOG) is None  # 13
    assert mmbench.infer_letter("I think it is the BIG DOG", {"A": "black cat", "B": "big dog"}) == "B"  # 25 <= 32
    assert mmbench.infer_letter("cat and dog", CAT_DOG) is None  # two options' texts


def test_mmbench_circular_groups_rotations_and_upload(tmp_path):
    columns = ["index", "question", "hint", "A", "B", "C", "D", "answer", "category", "split"]
    rows = [
        [1, "pet?", "", "cat", "dog", "", "", "B", "c", "dev"],
        [1000001, "pet?", "", "dog", "cat", "", "", "A", "c", "dev"],
        [2, "col?", "h", "red", "blue", "green", "", "C", "c", "dev"],
        [1000002, "col?", "h", "green", "red", "blue", "", "A", "c", "dev"],
        [3, "sky?", "", "sun", "moon", "", "", "B", "c", "dev"],
        [4, "way?", "", "up", "down", "", "", "A", "c", "dev"],
    ]
    tsv = tmp_path / "mmbench.tsv"
    with open(tsv, "w", newline="") as handle:
        csv.writer(handle, delimiter="\t").writerows([columns] + rows)

    def rotated(index, round_id, options, chars, text):
        return {"question_id": index, "round_id": round_id, "options": options, "option_char": chars, "text": text}

    answers = [
        {"question_id": 1, "round_id": 0, "text": "B"},
        {"question_id": 1000001, "round_id": 0, "text": "A"},  # group 1 right
        {"question_id": 2, "round_id": 0, "text": "B"},
        {"question_id": 1000002, "round_id": 0, "text": "A"},  # 2 wrong
        rotated(3, 0, ["sun", "moon"], ["A", "B"], "B"),
        rotated(3, 1, ["moon", "sun"], ["B", "A"], "A"),  # A->B: right
        rotated(4, 0, ["up", "down"], ["A", "B"], "A"),
        rotated(4, 1, ["down", "up"], ["B", "A"], "A"),
    ]  # A->B: wrong
    answers_file = write_jsonl(tmp_path / "answers.jsonl", answers)
    upload = tmp_path / "upload.tsv"
    # circular: groups 1 and 3 right of 4 -> 50%
    # vanilla (index < 1e6, round 0): 1 right, 2 wrong, 3 right, 4 right -> 75%
    metrics = score_cli.main(
        ["mmbench", "--answers", answers_file, "--question-file", str(tsv), "--upload", str(upload)]
    )
    assert (metrics["circular_accuracy"], metrics["vanilla_accuracy"], metrics["groups"]) == (50.0, 75.0, 4)
    with open(upload, newline="") as handle:
        table = list(csv.reader(handle, delimiter="\t"))
    assert table[0] == ["index", "question", "A", "B", "C", "D", "prediction", "answer", "split"]
    assert [row[6] for row in table[1:]] == ["B", "A", "B", "A", "B", "A"]  # round 0's answer for rows 3 and 4
    with pytest.raises(mmbench.ScoreError, match="1 TSV rows have no answer"):
        mmbench.score(answers[1:], mmbench._read_tsv(str(tsv)))
    # the server's .xlsx: the same table through openpyxl, or a clear error naming the missing package
    xlsx = tmp_path / "upload.xlsx"
    try:
        import openpyxl
    except ImportError:
        with pytest.raises(mmbench.ScoreError, match="pip install openpyxl"):
            mmbench.write_upload(str(xlsx), answers, mmbench._read_tsv(str(tsv)))
        assert not xlsx.exists()
    else:
        mmbench.write_upload(str(xlsx), answers, mmbench._read_tsv(str(tsv)))
        sheet = openpyxl.load_workbook(xlsx).active
        assert [cell.value for cell in sheet[1]][6] == "prediction" and sheet.cell(row=4, column=7).value == "B"


# ---------------------------------------------------------------- CLI and scripts


def test_every_benchmark_has_a_subcommand_whose_help_names_its_differences():
    subcommands = score_cli.build_parser()._subparsers._group_actions[0].choices
    assert set(subcommands) == {
        "vqav2",
        "vizwiz",
        "textvqa",
        "gqa",
        "scienceqa",
        "pope",
        "mme",
        "mmbench",
        "seed",
        "mmmu",
        "exact",
    }
    for name, parser in subcommands.items():
        assert "differ" in parser.description, name


def test_help_says_which_benchmarks_report_fractions():
    # SEED-Bench, like the papers, in percent; the scorers whose JSON still holds fractions are named
    help_text = " ".join(score_cli.build_parser().format_help().split())
    assert "Percent: TextVQA, GQA, ScienceQA, MMBench and SEED-Bench." in help_text
    fractions = "Fractions (0-1): POPE, MME's acc and acc+ (its scores are points, up to 200 a task), MMMU and exact"
    assert fractions in help_text


def test_bad_answers_file_is_one_line_naming_file_and_line(tmp_path, capsys):
    broken = tmp_path / "answers.jsonl"
    broken.write_text('{"question_id": 1, "text": "Yes"}\nnot json\n')
    with pytest.raises(SystemExit) as stopped:
        score_cli.main(["gqa", "--answers", str(broken), "--questions", str(tmp_path / "q.json")])
    assert stopped.value.code == 1
    assert (
        capsys.readouterr().err
        == f"mvlm.eval.score gqa: error: answers file {broken} line 2 is not a JSON object; fix or delete that line\n"
    )


@pytest.mark.parametrize(
    "script", ["vqav2", "gqa", "vizwiz", "sqa", "textvqa", "pope", "mme", "mmbench", "seed", "mmmu"]
)
def test_eval_scripts_are_valid_bash_and_score_their_benchmark(script):
    path = os.path.join(SCRIPTS, f"{script}.sh")
    subprocess.run(["bash", "-n", path], check=True)
    text = open(path).read()
    benchmark = {"sqa": "scienceqa"}.get(script, script)
    assert f"-m mvlm.eval.score {benchmark}" in text and '"$@"' in text
