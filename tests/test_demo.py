"""The demo (`python -m mvlm.demo`, what `bash scripts/demo.sh` runs): its dataset, and a real reduced run.

The reduced run (`--quick`) goes through everything the full demo does (dataset, tokenizer and models from
scratch, scripts/pretrain.sh and scripts/finetune.sh, model_vqa, score, the chat CLI) with fewer samples
and steps, and must learn: overall clearly above chance, and count questions, which the tiny model
learns first, far above it. It stops before the phase where the full demo's loss falls to near zero, so
it asserts no more than that. About two minutes on 2 CPU cores; the rest of the file takes a second.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import subprocess
import sys

import pytest
from transformers import AutoModelForCausalLM, AutoTokenizer, CLIPVisionModel

from mvlm.demo import data as demo_data
from mvlm.demo.__main__ import DemoError, child_env, prepare_output
from mvlm.demo.data import CATEGORIES, CHANCE, Shape
from mvlm.loading import load_pretrained_model

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# red circle top left, blue square center, green square bottom right
SCENE = (Shape(0, "circle", "red"), Shape(4, "square", "blue"), Shape(8, "square", "green"))


# ---------------------------------------------------------------- the dataset


def test_caption_and_questions_of_a_hand_made_scene():
    assert demo_data.caption(SCENE) == "a red circle top left, a blue square center, a green square bottom right"
    rng = random.Random(0)
    # the circle is the only shape that is named unambiguously; two squares make "the square" ambiguous
    assert demo_data.ask("color", SCENE, rng) == ("What color is the circle?", "red")
    assert demo_data.ask("count", SCENE, rng) == ("How many shapes are there?", "3")
    for _ in range(20):  # every colour is unique, so any shape question is well defined
        question, answer = demo_data.ask("shape", SCENE, rng)
        color = question.removeprefix("What shape is the ").removesuffix(" one?")
        assert answer == {"red": "circle", "blue": "square", "green": "square"}[color]
        question, answer = demo_data.ask("position", SCENE, rng)
        assert (question, answer) in {("Where is the circle?", "top left"), ("Where is the red one?", "top left"),
                                      ("Where is the blue one?", "center"), ("Where is the green one?", "bottom right")}
        question, answer = demo_data.ask("yes/no", SCENE, rng)
        thing = question.removeprefix("Is there a ").removesuffix("?").removesuffix(" one")
        assert answer == ("yes" if thing in {"circle", "square", "red", "blue", "green"} else "no"), question
    two_circles = (Shape(0, "circle", "red"), Shape(1, "circle", "blue"))
    assert demo_data.ask("color", two_circles, rng) is None  # "the circle" would be ambiguous


def test_scene_is_drawn_one_shape_per_patch():
    image = demo_data.draw_scene(SCENE, random.Random(0))
    assert image.size == (demo_data.IMAGE_SIZE, demo_data.IMAGE_SIZE) == (48, 48)
    red, blue = image.getpixel((8, 8)), image.getpixel((24, 24))
    assert red[0] > 180 and max(red[1:]) < 70 and blue[2] > 180 and max(blue[:2]) < 110
    assert image.getpixel((24, 8)) == image.getpixel((8, 40)) == demo_data.BACKGROUND  # empty cells
    assert image.getpixel((2, 2)) == demo_data.BACKGROUND  # a circle leaves its cell's corners empty
    assert image.getpixel((34, 34)) != demo_data.BACKGROUND  # a square fills them


def test_dataset_files_are_llava_formats_and_the_same_for_the_same_seed(tmp_path):
    first = demo_data.write_demo_data(str(tmp_path / "a"), 60, 10, 4, seed=3, describe_fraction=0.2)
    second = demo_data.write_demo_data(str(tmp_path / "b"), 60, 10, 4, seed=3, describe_fraction=0.2)
    for name in ("captions.json", "instruct.json", "test_questions.jsonl", "test_answers.jsonl"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    for index in range(4):
        image = f"images/test-{index}.png"
        assert (tmp_path / "a" / image).read_bytes() == (tmp_path / "b" / image).read_bytes()

    instruct = json.loads(open(first.instruct).read())
    with_image = [sample for sample in instruct if "image" in sample]
    assert len(with_image) == 60 and len(instruct) == 60 + round(60 * 0.03)  # plus text-only samples
    assert any(len(sample["conversations"]) > 2 for sample in with_image)  # multi-turn samples
    for sample in with_image:
        turns = sample["conversations"]
        assert [turn["from"] for turn in turns] == ["human", "gpt"] * (len(turns) // 2)
        assert turns[0]["value"].startswith("<image>\n") and all("<image>" not in t["value"] for t in turns[1:])
        assert os.path.isfile(os.path.join(first.folder, sample["image"]))
    captions = json.loads(open(first.captions).read())
    assert len(captions) == 10 and captions[0]["conversations"][0]["value"] == "<image>\nDescribe the image."

    questions = [json.loads(line) for line in open(first.test_questions)]
    answers = [json.loads(line) for line in open(first.test_answers)]
    assert [q["category"] for q in questions] == [c for c in CATEGORIES for _ in range(4)]
    assert [a["question_id"] for a in answers] == [q["question_id"] for q in questions] == list(range(20))
    assert set(questions[0]) == {"question_id", "image", "text", "category"}
    assert set(answers[0]) == {"question_id", "answer", "category"}
    assert "<image>" not in first.corpus()[0] and len(first.corpus()) > 100


def test_output_folder_of_something_else_is_refused(tmp_path):
    (tmp_path / "mine.txt").write_text("keep me")
    with pytest.raises(DemoError, match="not a demo folder"):
        prepare_output(str(tmp_path))
    assert (tmp_path / "mine.txt").read_text() == "keep me"


def test_training_is_one_plain_process_even_on_a_machine_with_several_gpus(monkeypatch, eight_gpus):
    """The scripts would start one process per GPU; the demo's tiny model trains in one, plainly."""
    for variable in ("LAUNCHER", "NPROC", "CUDA_VISIBLE_DEVICES"):
        monkeypatch.delenv(variable, raising=False)
    monkeypatch.setenv("PATH", eight_gpus["PATH"])
    result = subprocess.run(["bash", os.path.join(REPO, "scripts", "finetune.sh")],
                            env={**child_env(), "DRY_RUN": "1"}, capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split()[:3] == [sys.executable, "-m", "mvlm.train.train"]


# ---------------------------------------------------------------- a real reduced run


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    output = tmp_path_factory.mktemp("demo") / "demo"
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_WAIT_POLICY="PASSIVE", CUDA_VISIBLE_DEVICES="")
    result = subprocess.run([sys.executable, "-m", "mvlm.demo", "--quick", "--output", str(output), "--seed", "0"],
                            cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return output, result.stdout, result.stderr


def test_quick_demo_learns(quick_run):
    output, stdout, _ = quick_run
    scores = json.loads((output / "eval" / "scores.json").read_text())
    assert set(scores["per_category"]) == set(CATEGORIES) and scores["total"] == 5 * 50
    # every category has as many questions, so guessing scores the mean chance level overall (29%)
    overall_chance = sum(CHANCE.values()) / len(CHANCE)
    assert scores["accuracy"] >= overall_chance + 0.15, scores
    assert scores["per_category"]["count"] >= CHANCE["count"] + 0.35, scores
    # the table the user reads: each question type with its accuracy and its chance level
    table = stdout[stdout.rindex("question type"):]
    for category in CATEGORIES:
        row = re.search(rf"^{re.escape(category)}\s+([\d.]+)%\s+([\d.]+)%$", table, re.MULTILINE)
        assert row, table
        assert float(row.group(1)) == pytest.approx(100 * scores["per_category"][category], abs=0.05)
        assert float(row.group(2)) == pytest.approx(100 * CHANCE[category], abs=0.05)


def test_quick_demo_runs_the_users_scripts_and_tools(quick_run):
    output, stdout, stderr = quick_run
    launched = [line for line in stderr.splitlines() if line.startswith("mvlm: ") and "mvlm.train.train" in line]
    assert len(launched) == 2  # scripts/pretrain.sh and scripts/finetune.sh print the command they run
    assert "--tune_mm_mlp_adapter True" in launched[0] and "--mm_vision_select_layer 0" in launched[0]
    assert "--pretrain_mm_mlp_adapter" in launched[1] and "--version mistral_instruct" in launched[1]
    assert "training policy:" in stderr and "it/s]" in stderr  # progress while it trains
    assert "mvlm.eval.model_vqa" in stdout and "Total accuracy:" in stdout  # the scorer's own report
    assert re.search(r"\| python -m mvlm\.serve\.cli --model-path .*finetune --image-file .*test-0\.png", stdout)
    assert re.search(r"ASSISTANT: \w+", stdout)  # the chat CLI answered

    # the starting checkpoints are ordinary HuggingFace folders, as if downloaded
    tokenizer = AutoTokenizer.from_pretrained(output / "base" / "llm")
    assert AutoModelForCausalLM.from_pretrained(output / "base" / "llm").config.model_type == "llama"
    assert tokenizer.tokenize("[INST] red circle?") == ["[INST]", "▁red", "▁circle", "?"]
    assert CLIPVisionModel.from_pretrained(output / "base" / "vision_tower").config.image_size == 48
    _, model, _, _ = load_pretrained_model(str(output / "checkpoints" / "finetune"), device="cpu")
    assert (model.config.conv_mode, model.config.vision_feature_layer, model.num_image_tokens) == (
        "mistral_instruct", 0, 9)
    answers = [json.loads(line) for line in open(output / "eval" / "answers.jsonl")]
    assert len(answers) == 250 and answers[0]["model_id"] == "finetune"


# ---------------------------------------------------------------- the same numbers every run

MINI_RUN = """
import dataclasses, sys
from mvlm.demo.__main__ import QUICK, run_demo
config = dataclasses.replace(QUICK, train_images=1500, caption_images=200, test_per_category=10, stage1_steps=5,
                             stage2_steps=40, stage2_batch=32, logging_steps=5)
run_demo(config, sys.argv[1], seed=0)
"""


def mini_run(output, shell_threads):
    """A small demo run (1,500 images, 40 stage-2 steps) from a shell whose OMP_NUM_THREADS is `shell_threads`."""
    env = dict(os.environ, HF_HUB_OFFLINE="1", CUDA_VISIBLE_DEVICES="", OMP_NUM_THREADS=str(shell_threads))
    result = subprocess.run([sys.executable, "-c", MINI_RUN, str(output)], cwd=REPO, env=env, capture_output=True,
                            text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    history = json.loads((output / "checkpoints" / "finetune" / "trainer_state.json").read_text())["log_history"]
    losses = [entry["loss"] for entry in history if "loss" in entry]
    weights = hashlib.sha256((output / "checkpoints" / "finetune" / "model.safetensors").read_bytes()).hexdigest()
    answers = [json.loads(line) for line in (output / "eval" / "answers.jsonl").read_text().splitlines()]
    return losses, weights, [(answer["question_id"], answer["text"]) for answer in answers]


def test_a_seeded_run_gives_the_same_numbers_whatever_the_shell_sets(tmp_path):
    """The demo fixes its thread count and asks for deterministic kernels: a user who reruns it (from a shell
    with other thread settings, say) gets the weights, losses and answers of the run before, bit for bit."""
    first_losses, first_weights, first_answers = mini_run(tmp_path / "first", shell_threads=1)
    second_losses, second_weights, second_answers = mini_run(tmp_path / "second", shell_threads=3)
    assert len(first_losses) == 8 and first_losses[-1] < first_losses[0]
    assert (second_losses, second_weights) == (first_losses, first_weights)
    assert second_answers == first_answers and len(first_answers) == 50
