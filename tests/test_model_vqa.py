"""Benchmark runners on a tiny random checkpoint: LLaVA's files, resume, chunks, batch = one at a time.

Expected answers come from the model's own `generate` on prompts built by hand from the template (not from
the runner's code); expected prompts of ScienceQA and MMBench come from LLaVA-1.5's real answer files.
"""

import base64
import io
import json
import os
import shutil
import subprocess
import sys
import time

import pandas as pd
import pytest
import torch
from PIL import Image

from mvlm.conversation import get_conversation
from mvlm.data.images import process_images
from mvlm.data.tokenize import tokenize_prompt
from mvlm.eval import model_vqa, model_vqa_mmbench, model_vqa_science
from mvlm.eval.runner import SINGLE_PRED_PROMPT, get_chunk, split_list
from mvlm.inference import (
    batch_pixel_values,
    encode_prompt,
    generate_answers,
    generation_config,
    left_padded_batch,
)
from tests.helpers.chat_model import save_chat_checkpoint

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REFERENCE = "/work/shared/eval-reference"
ANSWER_KEYS = ["question_id", "prompt", "text", "answer_id", "model_id", "metadata"]
COLORS = {"red.png": ((200, 30, 30), (28, 28)), "blue.png": ((30, 30, 200), (40, 20)),
          "green.png": ((30, 200, 30), (60, 56))}


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    folder = tmp_path_factory.mktemp("images")
    for name, (color, size) in COLORS.items():
        Image.new("RGB", size, color).save(folder / name)
    return str(folder)


def write_questions(path, questions):
    with open(path, "w", encoding="utf-8") as handle:
        for question in questions:
            handle.write(json.dumps(question) + "\n")
    return str(path)


def read_answers(path):
    with open(path, encoding="utf-8") as handle:
        return [json.loads(line) for line in handle]


QUESTIONS = [
    {"question_id": 101, "image": "red.png", "text": "What color is the square?", "category": "color"},
    {"question_id": "q-2", "text": "Describe the picture briefly in many words please, left or right?",
     "category": "text"},
    {"question_id": 3, "image": "blue.png", "text": "Is it blue? Answer yes or no.", "category": "color"},
    {"question_id": 4, "text": "yes", "category": "text"},
    {"question_id": 5, "image": "green.png", "text": "Where is the square: left, right, top or bottom of the image?"},
    {"question_id": 6, "image": "red.png", "text": "How many squares are there?"},
]


def run_vqa(model_dir, images, question_file, answers_file, *extra):
    return model_vqa.main(["--model-path", model_dir, "--question-file", question_file, "--image-folder", images,
                           "--answers-file", str(answers_file), "--max_new_tokens", "10", "--device", "cpu", *extra])


def reference_answer(loaded, images, question, max_new_tokens=10, message=None):
    """Greedy answer from model.generate on the v1 prompt built by hand: what the runner must write."""
    tokenizer, model, image_processor = loaded
    conv = get_conversation("v1")
    message = message if message is not None else question["text"]
    image = question.get("image")
    conv.append_message("USER", f"<image>\n{message}" if image else message)
    input_ids = tokenize_prompt(conv, tokenizer, model.num_image_tokens)[None]
    pixel_values = None
    if image:
        pixel_values = process_images([Image.open(os.path.join(images, image))], image_processor, "pad")
    output = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=max_new_tokens, do_sample=False,
                            pad_token_id=tokenizer.pad_token_id)
    return tokenizer.decode(output[0], skip_special_tokens=True).split("</s>")[0].strip()


def test_answers_file_is_llavas_format_in_question_order(model_dir, loaded, images, tmp_path):
    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    assert run_vqa(model_dir, images, question_file, tmp_path / "out" / "a.jsonl") == 0
    answers = read_answers(tmp_path / "out" / "a.jsonl")
    assert [answer["question_id"] for answer in answers] == [101, "q-2", 3, 4, 5, 6]
    expected = [reference_answer(loaded, images, question) for question in QUESTIONS]
    assert [answer["text"] for answer in answers] == expected
    assert len(set(expected)) >= 4, "the tiny model should answer different questions differently"
    for answer, question in zip(answers, QUESTIONS):
        assert list(answer) == ANSWER_KEYS
        assert answer["prompt"] == question["text"]
        assert answer["model_id"] == "chat-model" and answer["metadata"] == {}
        assert len(answer["answer_id"]) == 22
    assert len({answer["answer_id"] for answer in answers}) == len(answers)


def test_single_pred_prompt_appends_llavas_instruction(model_dir, loaded, images, tmp_path):
    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    assert run_vqa(model_dir, images, question_file, tmp_path / "a.jsonl", "--single-pred-prompt") == 0
    answers = read_answers(tmp_path / "a.jsonl")
    instruction = "Answer with the option's letter from the given choices directly."
    for answer, question in zip(answers, QUESTIONS):
        message = question["text"] + "\n" + instruction
        assert answer["prompt"] == message
        assert answer["text"] == reference_answer(loaded, images, question, message=message)


def encoded(loaded, images, question):
    tokenizer, model, image_processor = loaded
    conv = get_conversation(model.config.conv_mode)
    image = question.get("image")
    conv.append_message(conv.roles[0], f"<image>\n{question['text']}" if image else question["text"])
    pictures = [Image.open(os.path.join(images, image))] if image else []
    return encode_prompt(conv, pictures, tokenizer, image_processor, model)


def assert_batches_match_singles(loaded, prompts, config, batch_size):
    tokenizer, model, _ = loaded
    singles = [generate_answers(model, tokenizer, [prompt], config)[0] for prompt in prompts]
    batched = []
    for start in range(0, len(prompts), batch_size):
        batched += generate_answers(model, tokenizer, prompts[start : start + batch_size], config)
    for single, row in zip(singles, batched):
        assert row.token_ids[: len(single.token_ids)] == single.token_ids
        assert set(row.token_ids[len(single.token_ids) :]) <= {tokenizer.pad_token_id}
        assert row.text == single.text
    return singles


@pytest.mark.parametrize("aspect_ratio", ["pad", "anyres"])
def test_left_padded_batches_give_the_tokens_of_batch_size_one(loaded, images, aspect_ratio, monkeypatch):
    tokenizer, model, _ = loaded
    monkeypatch.setattr(model.config, "image_aspect_ratio", aspect_ratio)
    prompts = [encoded(loaded, images, question) for question in QUESTIONS]
    assert len({len(prompt.input_ids) for prompt in prompts}) == len(prompts)  # every row padded differently
    if aspect_ratio == "anyres":  # images of different shapes get different numbers of tiles
        assert len({prompt.pixel_values.shape[1] for prompt in prompts if prompt.pixel_values is not None}) > 1
    # The padded batch's next-token logits are each row's own, to rounding (fp32 rounding is ~1e-5 here; a
    # masking or position mistake moves them by whole units). Positions count from each row's first real token.
    input_ids, attention_mask = left_padded_batch(prompts, tokenizer.pad_token_id, torch.device("cpu"))
    position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
    with torch.no_grad():
        batch_logits = model(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
                             pixel_values=batch_pixel_values(prompts, torch.device("cpu"))).logits[:, -1]
        for row, prompt in enumerate(prompts):
            pixel_values = None if prompt.pixel_values is None else batch_pixel_values([prompt], torch.device("cpu"))
            alone = model(input_ids=prompt.input_ids[None], pixel_values=pixel_values).logits[0, -1]
            assert torch.allclose(batch_logits[row], alone, atol=1e-4, rtol=0), row
    config = generation_config(model, tokenizer, max_new_tokens=12, stop_str="</s>")
    singles = None
    for batch_size in (6, 4):
        singles = assert_batches_match_singles(loaded, prompts, config, batch_size)
    assert len({tuple(single.token_ids) for single in singles}) == len(singles)

    # A stop string that row 0 reaches mid-answer ends that row there, alone, in the batch too.
    tokens = singles[0].token_ids
    position, stop = next((index, tokenizer.decode(tokens[index])) for index in range(2, len(tokens))
                          if tokenizer.decode(tokens[index]).strip()
                          and tokenizer.decode(tokens[index]) not in tokenizer.decode(tokens[:index]))
    stopped = assert_batches_match_singles(
        loaded, prompts, generation_config(model, tokenizer, max_new_tokens=12, stop_str=stop), 6)
    assert stopped[0].token_ids == tokens[: position + 1]
    assert stopped[0].text == tokenizer.decode(tokens[: position + 1], skip_special_tokens=True).split(stop)[0].strip()


def test_runner_batch_size_gives_the_same_answers(model_dir, images, tmp_path):
    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    assert run_vqa(model_dir, images, question_file, tmp_path / "one.jsonl") == 0
    assert run_vqa(model_dir, images, question_file, tmp_path / "four.jsonl", "--batch-size", "4") == 0
    one, four = read_answers(tmp_path / "one.jsonl"), read_answers(tmp_path / "four.jsonl")
    assert [(a["question_id"], a["text"]) for a in one] == [(a["question_id"], a["text"]) for a in four]


def test_chunks_partition_questions_as_llava_does(model_dir, images, tmp_path):
    items = list(range(10))
    assert split_list(items, 3) == [[0, 1, 2, 3], [4, 5, 6, 7], [8, 9]]  # ceil(10/3) = 4 per chunk
    assert split_list(items, 4) == [[0, 1, 2], [3, 4, 5], [6, 7, 8], [9]]
    assert get_chunk(list(range(5)), 4, 3) == []  # ceil(5/4) = 2: only 3 chunks exist
    for count in range(0, 13):
        for chunks in range(1, 6):
            parts = [get_chunk(list(range(count)), chunks, index) for index in range(chunks)]
            assert sum(parts, []) == list(range(count))

    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    assert run_vqa(model_dir, images, question_file, tmp_path / "all.jsonl") == 0
    merged = []
    for index in range(4):
        answers_file = tmp_path / f"4_{index}.jsonl"
        assert run_vqa(model_dir, images, question_file, answers_file, "--num-chunks", "4", "--chunk-idx",
                       str(index)) == 0
        merged += read_answers(answers_file)
    assert [(a["question_id"], a["text"]) for a in merged] == [
        (a["question_id"], a["text"]) for a in read_answers(tmp_path / "all.jsonl")]
    assert [len(read_answers(tmp_path / f"4_{index}.jsonl")) for index in range(4)] == [2, 2, 2, 0]


def test_rerun_skips_answered_questions_and_drops_a_half_written_line(model_dir, images, tmp_path, capsys):
    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    assert run_vqa(model_dir, images, question_file, tmp_path / "full.jsonl") == 0
    full_lines = open(tmp_path / "full.jsonl", encoding="utf-8").read().splitlines(keepends=True)
    killed = tmp_path / "killed.jsonl"
    killed.write_text("".join(full_lines[:3]) + full_lines[3][:25], encoding="utf-8")
    capsys.readouterr()

    assert run_vqa(model_dir, images, question_file, killed) == 0
    resumed = read_answers(killed)
    full = [json.loads(line) for line in full_lines]
    assert [a["question_id"] for a in resumed] == [a["question_id"] for a in full]
    assert [a["text"] for a in resumed] == [a["text"] for a in full]
    assert [a["answer_id"] for a in resumed[:3]] == [a["answer_id"] for a in full[:3]]  # kept, not redone
    assert not {a["answer_id"] for a in resumed[3:]} & {a["answer_id"] for a in full}  # answered anew
    err = capsys.readouterr().err
    assert "half-written last line" in err and "resuming: 3 of 6" in err

    before = killed.read_bytes()
    assert run_vqa(model_dir, images, question_file, killed) == 0  # all answered: nothing changes
    assert killed.read_bytes() == before


def test_duplicate_question_ids_resume_by_occurrence(model_dir, images, tmp_path):
    """LLaVA's MME file asks two questions per image under one question_id."""
    questions = [{"question_id": "img/1.png", "image": "red.png", "text": text}
                 for text in ("Is it red?", "Is it blue?")]
    question_file = write_questions(tmp_path / "q.jsonl", questions)
    answers_file = tmp_path / "a.jsonl"
    assert run_vqa(model_dir, images, question_file, answers_file) == 0
    lines = answers_file.read_text(encoding="utf-8").splitlines(keepends=True)
    answers_file.write_text(lines[0], encoding="utf-8")
    assert run_vqa(model_dir, images, question_file, answers_file) == 0
    assert [a["prompt"] for a in read_answers(answers_file)] == ["Is it red?", "Is it blue?"]


def test_rerun_refuses_answers_of_another_model_or_prompt(model_dir, images, tmp_path, capsys):
    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    answers_file = tmp_path / "a.jsonl"
    assert run_vqa(model_dir, images, question_file, answers_file) == 0
    before = answers_file.read_bytes()
    capsys.readouterr()
    assert run_vqa(model_dir, images, question_file, answers_file, "--single-pred-prompt") == 1
    assert "different prompt" in capsys.readouterr().err
    other = json.loads(before.decode().splitlines()[0])
    other["model_id"] = "another-model"
    answers_file.write_text(json.dumps(other) + "\n", encoding="utf-8")
    assert run_vqa(model_dir, images, question_file, answers_file) == 1
    assert "another-model" in capsys.readouterr().err
    assert read_answers(answers_file) == [other]  # the user's file is left as it was


def test_rerun_refuses_answers_older_than_the_checkpoint(model_dir, images, tmp_path, capsys):
    """A checkpoint retrained in the same folder must not inherit the old model's answers."""
    retrained = shutil.copytree(model_dir, tmp_path / "chat-model")
    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS[:2])
    answers_file = tmp_path / "a.jsonl"
    answers_file.write_text("", encoding="utf-8")
    assert run_vqa(str(retrained), images, question_file, answers_file, "--num-chunks", "2") == 0
    before = answers_file.read_bytes()
    later = time.time() + 60
    os.utime(retrained / "model.safetensors", (later, later))
    capsys.readouterr()
    assert run_vqa(str(retrained), images, question_file, answers_file) == 1
    assert "written before the checkpoint" in capsys.readouterr().err
    assert answers_file.read_bytes() == before


def test_errors_are_one_line_and_name_the_culprit(model_dir, images, tmp_path, capsys, checkpoints):
    question_file = write_questions(tmp_path / "q.jsonl", [{"question_id": 7, "image": "nope.png", "text": "Hi?"}])
    assert run_vqa(model_dir, images, question_file, tmp_path / "a.jsonl") == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "nope.png" in err and "question 7" in err and "--image-folder" in err

    broken = tmp_path / "broken.jsonl"
    broken.write_text('{"question_id": 1, "text": "a"}\n{"question_id": 2, \n', encoding="utf-8")
    assert run_vqa(model_dir, images, str(broken), tmp_path / "b.jsonl") == 1
    assert f"{broken}:2" in capsys.readouterr().err

    no_template = save_chat_checkpoint(checkpoints, str(tmp_path / "no-template"), conv_mode=None)
    good_questions = write_questions(tmp_path / "good.jsonl", QUESTIONS[:1])
    assert run_vqa(no_template, images, good_questions, tmp_path / "c.jsonl") == 1
    assert "--conv-mode" in capsys.readouterr().err
    assert run_vqa(model_dir, images, good_questions, tmp_path / "d.jsonl", "--conv-mode", "vicuna_v9") == 1
    assert "unknown chat template 'vicuna_v9'" in capsys.readouterr().err


def test_killed_subprocess_resumes_where_it_stopped(model_dir, images, tmp_path):
    """A real run killed (SIGKILL) mid-way, then run again: every question answered once, in order."""
    questions = [dict(QUESTIONS[index % len(QUESTIONS)], question_id=index) for index in range(8)]
    question_file = write_questions(tmp_path / "q.jsonl", questions)
    answers_file = tmp_path / "a.jsonl"
    command = [sys.executable, "-m", "mvlm.eval.model_vqa", "--model-path", model_dir, "--question-file",
               question_file, "--image-folder", images, "--answers-file", str(answers_file), "--max_new_tokens", "60",
               "--device", "cpu"]
    env = dict(os.environ, HF_HUB_OFFLINE="1", OMP_NUM_THREADS="2")
    process = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 180
    while time.time() < deadline and (not answers_file.exists() or answers_file.read_text().count("\n") < 2):
        assert process.poll() is None, process.stderr.read().decode()
        time.sleep(0.02)
    process.kill()
    process.wait()
    answered_before_kill = answers_file.read_text().count("\n")
    assert 2 <= answered_before_kill < len(questions)

    finished = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert finished.returncode == 0, finished.stderr
    assert f"resuming: {answered_before_kill} of 8" in finished.stderr
    assert "a.jsonl: 100%" in finished.stderr  # the progress bar
    answers = read_answers(answers_file)
    assert [a["question_id"] for a in answers] == list(range(8))
    clean = tmp_path / "clean.jsonl"
    assert run_vqa(model_dir, images, question_file, clean, "--max_new_tokens", "60") == 0
    assert [a["text"] for a in answers] == [a["text"] for a in read_answers(clean)]


# ScienceQA --------------------------------------------------------------------------------------------------

def test_scienceqa_prompts_match_llava_15_answer_file():
    """Every prompt and id LLaVA-1.5-13B's answer file holds, rebuilt from llava_test_CQM-A.json."""
    import argparse

    samples = json.load(open(f"{REFERENCE}/scienceqa/llava_test_CQM-A.json", encoding="utf-8"))
    reference = read_answers(f"{REFERENCE}/scienceqa/answers/llava-v1.5-13b.jsonl")
    args = argparse.Namespace(single_pred_prompt=True, image_folder="")
    built = [model_vqa_science.question_from_sample(sample, "file", args).record for sample in samples]
    assert [(r["question_id"], r["prompt"]) for r in built] == [(r["question_id"], r["prompt"]) for r in reference]


def test_scienceqa_runner_on_real_entries(model_dir, loaded, tmp_path):
    samples = json.load(open(f"{REFERENCE}/scienceqa/llava_test_CQM-A.json", encoding="utf-8"))
    chosen = [s for s in samples if "image" in s][:2] + [s for s in samples if "image" not in s][:2]
    for index, sample in enumerate(chosen):
        if "image" in sample:
            (tmp_path / os.path.dirname(sample["image"])).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (30 + 10 * index, 30), (40 * index, 90, 200)).save(tmp_path / sample["image"])
    question_file = tmp_path / "llava_test_CQM-A.json"
    question_file.write_text(json.dumps(chosen), encoding="utf-8")
    answers_file = tmp_path / "answers" / "sqa.jsonl"
    assert model_vqa_science.main(["--model-path", model_dir, "--question-file", str(question_file),
                                   "--image-folder", str(tmp_path), "--answers-file", str(answers_file),
                                   "--single-pred-prompt", "--max_new_tokens", "6", "--batch-size", "3",
                                   "--device", "cpu"]) == 0
    answers = read_answers(answers_file)
    assert [a["question_id"] for a in answers] == [s["id"] for s in chosen]
    for answer, sample in zip(answers, chosen):
        assert list(answer) == ANSWER_KEYS
        question = sample["conversations"][0]["value"].replace("<image>", "").strip()
        expected_prompt = question + "\n" + SINGLE_PRED_PROMPT
        assert answer["prompt"] == ("<image>\n" + expected_prompt if "image" in sample else expected_prompt)
        reference = reference_answer(loaded, str(tmp_path), {"image": sample.get("image")}, max_new_tokens=6,
                                     message=expected_prompt)
        assert answer["text"] == reference


# MMBench ----------------------------------------------------------------------------------------------------

def test_mmbench_prompts_and_options_match_llava_15_answer_file():
    """Options (empty cells dropped), letters and prompts of LLaVA-1.5's MMBench-dev answers, for every row.

    The reference tsv has no hint column, so each rebuilt prompt must be the end of LLaVA's (which starts
    with the hint when there was one) and equal it for the rows without a hint."""
    table = pd.read_table(f"{REFERENCE}/mmbench/mmbench_dev_20230712_noimages.tsv", dtype=str).to_dict("records")
    reference = read_answers(f"{REFERENCE}/mmbench/answers/llava-v1.5-13b.jsonl")
    exact = 0
    for row, answer in zip(table, reference, strict=True):
        options = model_vqa_mmbench.row_options(row)
        prompt = model_vqa_mmbench.build_prompt(row["question"], None, options)
        assert model_vqa_mmbench.as_question_id(row["index"]) == answer["question_id"]
        assert options == answer["options"] and answer["option_char"] == list("ABCD"[: len(options)])
        assert answer["prompt"].endswith(prompt)
        exact += answer["prompt"] == prompt
    assert exact == 4055  # the other 322 rows had a hint


def png_base64(color, size=(28, 28)):
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


MMBENCH_ROWS = [
    {"index": 11, "question": "What color is the square?", "hint": "A picture of a square.", "A": "red", "B": "blue",
     "C": "green", "D": "", "answer": "A", "category": "color", "image": png_base64((200, 30, 30)), "l2-category": "x",
     "split": "dev"},
    {"index": 1000011, "question": "How many squares?", "hint": "", "A": "1", "B": "2", "C": "", "D": "",
     "answer": "A", "category": "count", "image": png_base64((30, 30, 200), (40, 20)), "l2-category": "x",
     "split": "dev"},
    {"index": 12, "question": "Which side?", "hint": "nan", "A": "left", "B": "right", "C": "top", "D": "bottom",
     "answer": "B", "category": "position", "image": png_base64((30, 200, 30)), "l2-category": "y", "split": "dev"},
]


def write_tsv(path, rows):
    pd.DataFrame(rows).to_csv(path, sep="\t", index=False)
    return str(path)


def test_mmbench_all_rounds_rotate_the_options(model_dir, loaded, tmp_path):
    tsv = write_tsv(tmp_path / "mmbench_dev.tsv", MMBENCH_ROWS)
    answers_file = tmp_path / "mmbench.jsonl"
    assert model_vqa_mmbench.main(["--model-path", model_dir, "--question-file", tsv, "--answers-file",
                                   str(answers_file), "--all-rounds", "--single-pred-prompt", "--max_new_tokens", "6",
                                   "--batch-size", "4", "--device", "cpu"]) == 0
    answers = read_answers(answers_file)
    assert [(a["question_id"], a["round_id"]) for a in answers] == [
        (11, 0), (11, 1), (11, 2), (1000011, 0), (1000011, 1), (12, 0), (12, 1), (12, 2), (12, 3)]
    assert list(answers[0]) == ["question_id", "round_id", "prompt", "text", "options", "option_char", "answer_id",
                                "model_id", "metadata"]
    assert answers[0]["prompt"] == "A picture of a square.\nWhat color is the square?\nA. red\nB. blue\nC. green"
    assert answers[1]["prompt"] == "A picture of a square.\nWhat color is the square?\nA. blue\nB. green\nC. red"
    assert answers[1]["options"] == ["blue", "green", "red"] and answers[1]["option_char"] == ["B", "C", "A"]
    assert answers[2]["options"] == ["green", "red", "blue"] and answers[2]["option_char"] == ["C", "A", "B"]
    assert answers[4]["prompt"] == "How many squares?\nA. 2\nB. 1"  # empty hint, numeric options kept as text
    assert answers[8]["prompt"] == "Which side?\nA. bottom\nB. left\nC. right\nD. top"  # hint "nan" is no hint
    assert answers[8]["option_char"] == ["D", "A", "B", "C"]

    tokenizer, model, image_processor = loaded
    image = Image.open(io.BytesIO(base64.b64decode(MMBENCH_ROWS[0]["image"])))
    message = answers[1]["prompt"] + "\n" + SINGLE_PRED_PROMPT
    conv = get_conversation("v1")
    conv.append_message("USER", "<image>\n" + message)
    output = model.generate(tokenize_prompt(conv, tokenizer, model.num_image_tokens)[None],
                            pixel_values=process_images([image], image_processor, "pad"), max_new_tokens=6,
                            do_sample=False, pad_token_id=tokenizer.pad_token_id)
    assert answers[1]["text"] == tokenizer.decode(output[0], skip_special_tokens=True).split("</s>")[0].strip()


def test_mmbench_single_round_chunks_and_chinese_instruction(model_dir, tmp_path):
    import argparse

    args = argparse.Namespace(all_rounds=False, single_pred_prompt=True, lang="cn")
    question = model_vqa_mmbench.questions_for_row(MMBENCH_ROWS[2], "file", args)
    assert len(question) == 1
    assert question[0].message == "Which side?\nA. left\nB. right\nC. top\nD. bottom\n请直接回答选项字母。"

    tsv = write_tsv(tmp_path / "mmbench_dev.tsv", MMBENCH_ROWS)
    ids = []
    for index in range(2):
        answers_file = tmp_path / f"{index}.jsonl"
        assert model_vqa_mmbench.main(["--model-path", model_dir, "--question-file", tsv, "--answers-file",
                                       str(answers_file), "--lang", "cn", "--single-pred-prompt", "--num-chunks", "2",
                                       "--chunk-idx", str(index), "--max_new_tokens", "3", "--device", "cpu"]) == 0
        ids.append([(a["question_id"], a["round_id"]) for a in read_answers(answers_file)])
    assert ids == [[(11, 0), (1000011, 0)], [(12, 0)]]


def test_mmbench_without_images_is_refused(model_dir, tmp_path, capsys):
    reference_tsv = f"{REFERENCE}/mmbench/mmbench_dev_20230712_noimages.tsv"
    assert model_vqa_mmbench.main(["--model-path", model_dir, "--question-file", reference_tsv,
                                   "--answers-file", str(tmp_path / "a.jsonl")]) == 1
    err = capsys.readouterr().err
    assert "['image']" in err and len(err.strip().splitlines()) == 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_runner_on_cuda_batches_match_batch_size_one(model_dir, images, tmp_path):
    """On a GPU the checkpoint loads in float16, as LLaVA's does; no `.cuda()` is hard-coded anywhere."""
    question_file = write_questions(tmp_path / "q.jsonl", QUESTIONS)
    texts = []
    for batch_size in ("1", "6"):
        answers_file = tmp_path / f"cuda-{batch_size}.jsonl"
        assert run_vqa(model_dir, images, question_file, answers_file, "--device", "cuda", "--batch-size",
                       batch_size) == 0
        texts.append([answer["text"] for answer in read_answers(answers_file)])
    assert texts[0] == texts[1] and len(texts[0]) == len(QUESTIONS)
