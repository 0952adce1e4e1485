"""Generation stops at the template's stop string with every kind of tokenizer mvlm may wrap.

transformers' `StopStringCriteria` cannot be built for word-level and WordPiece vocabularies; mvlm must stop
there all the same, in a batch of one and in batches, streaming and not. Expected answers come from the same
model generating without a stop string, cut by hand at the stop string's first occurrence.
"""

import io
import json
import subprocess
import sys

import pytest
import torch
from PIL import Image
from transformers import StopStringCriteria

from mvlm.conversation import get_conversation
from mvlm.model.builder import build_model, save_checkpoint
from mvlm.inference import (
    DecodedTextStop,
    StopStringStreamer,
    encode_prompt,
    generate_answers,
    generation_config,
    stop_criteria,
)
from tests.helpers import tiny
from tests.helpers.chat_model import spread_weights

KINDS = ("bytelevel", "sentencepiece", "wordpiece", "wordlevel")
MAX_NEW = 16
QUESTIONS = (("What color is the square?", (200, 30, 30)), ("Describe the picture briefly.", (30, 30, 200)))


def tokenizer_of(kind):
    if kind in ("wordpiece", "wordlevel"):
        return tiny.train_word_tokenizer(kind)
    return tiny.train_tokenizer(kind, with_bos=kind == "sentencepiece")


@pytest.fixture(scope="module", params=KINDS)
def chat(request, checkpoints, tmp_path_factory):
    """(kind, tokenizer, model, image_processor, checkpoint folder) of a tiny v1 chat model on `kind`."""
    return make_chat(request.param, checkpoints, tmp_path_factory)


@pytest.fixture(scope="module")
def word_level_chat(checkpoints, tmp_path_factory):
    return make_chat("wordlevel", checkpoints, tmp_path_factory)


def make_chat(kind, checkpoints, tmp_path_factory):
    root = tmp_path_factory.mktemp(kind)
    llm = tiny.save_llama_with_tokenizer(tokenizer_of(kind), tiny.folder_in(str(root), "llm"))
    model, tokenizer, image_processor = build_model(llm, checkpoints("tower", "clip"))
    spread_weights(model)
    with torch.no_grad():  # the answers must run on past the stop strings the tests pick, not end at EOS
        model.get_output_embeddings().weight[tokenizer.eos_token_id] = 0
    model.config.conv_mode = "v1"
    model.eval()
    folder = str(root / "ckpt")
    save_checkpoint(folder, model, tokenizer, image_processor)
    return kind, tokenizer, model, image_processor, folder


def prompts(chat):
    _, tokenizer, model, image_processor, _ = chat
    encoded = []
    for question, color in QUESTIONS:
        conv = get_conversation("v1")
        conv.append_message(conv.roles[0], f"<image>\n{question}")
        conv.append_message(conv.roles[1], None)
        encoded.append(encode_prompt(conv, [Image.new("RGB", (28, 28), color)], tokenizer, image_processor, model))
    return encoded


def answer(chat, encoded, stop_str, streamer=None):
    _, tokenizer, model, _, _ = chat
    config = generation_config(model, tokenizer, max_new_tokens=MAX_NEW, stop_str=stop_str)
    return generate_answers(model, tokenizer, encoded, config, streamer=streamer)


def new_text(tokenizer, ids):
    return tokenizer.decode(ids, skip_special_tokens=False)


def stop_string_inside(tokenizer, ids):
    """The text that two ordinary generated tokens in the middle of `ids` add to the answer, and where they end.

    It ends on a token boundary, as a template's stop string written by the model does, first appears once
    both tokens are there, and reads the same in the whole answer (a random model also writes lone bytes of
    byte-fallback vocabularies and WordPiece continuations, which decode differently beside their neighbours:
    those are not taken).
    """
    special = set(tokenizer.all_special_ids)
    whole = (new_text(tokenizer, ids), tokenizer.decode(ids, skip_special_tokens=True))
    for end in range(4, len(ids) - 1):
        before, text = new_text(tokenizer, ids[: end - 2]), new_text(tokenizer, ids[:end])
        if special.intersection(ids[end - 2 : end]) or not text.startswith(before):
            continue
        stop = text[len(before) :].strip()
        readable = len(stop) >= 2 and "\ufffd" not in stop and all(stop in decoded for decoded in whole)
        if readable and first_end(tokenizer, ids, stop) == end:
            return stop, end
    raise AssertionError(f"no ordinary token pair in {ids}")


def first_end(tokenizer, ids, stop_str):
    """The fewest generated tokens whose text contains `stop_str`: where generation must stop."""
    return next(n for n in range(1, len(ids) + 1) if stop_str in new_text(tokenizer, ids[:n]))


def cut(text, stop_str):
    return (text[: text.index(stop_str)] if stop_str in text else text).strip()


def test_transformers_matcher_is_used_where_it_can_be_built_and_text_matching_elsewhere(chat):
    kind, tokenizer = chat[0], chat[1]
    (criterion,) = stop_criteria(tokenizer, "</s>")
    expected = {"bytelevel": StopStringCriteria, "sentencepiece": StopStringCriteria, "wordlevel": DecodedTextStop}
    assert type(criterion) is expected.get(kind, type(criterion))  # WordPiece: either, by the stop string
    assert len(stop_criteria(tokenizer, None)) == 0


def test_a_batch_of_one_stops_right_after_the_stop_string(chat):
    tokenizer = chat[1]
    for prompt in prompts(chat):
        (free,) = answer(chat, [prompt], None)
        assert len(free.token_ids) == MAX_NEW  # the random model runs on: any stop below is the stop string's
        stop_str, _ = stop_string_inside(tokenizer, free.token_ids)
        (stopped,) = answer(chat, [prompt], stop_str)
        end = first_end(tokenizer, free.token_ids, stop_str)
        assert stopped.token_ids == free.token_ids[:end] and end < MAX_NEW
        assert stopped.text == cut(tokenizer.decode(free.token_ids, skip_special_tokens=True), stop_str)
        assert stop_str not in stopped.text


def test_a_batch_stops_each_row_at_its_own_stop_string(chat):
    tokenizer = chat[1]
    encoded = prompts(chat)
    free = answer(chat, encoded, None)
    stop_str, _ = stop_string_inside(tokenizer, free[0].token_ids)
    stopped = answer(chat, encoded, stop_str)
    for row_free, row_stopped in zip(free, stopped):
        assert row_stopped.text == cut(tokenizer.decode(row_free.token_ids, skip_special_tokens=True), stop_str)
    end = first_end(tokenizer, free[0].token_ids, stop_str)
    assert stopped[0].token_ids[:end] == free[0].token_ids[:end]
    assert set(stopped[0].token_ids[end:]) <= {tokenizer.pad_token_id}  # finished: only padding after it
    assert stopped[0].text == answer(chat, encoded[:1], stop_str)[0].text  # as when asked alone


def test_streaming_shows_the_answer_up_to_the_stop_string(chat):
    tokenizer = chat[1]
    prompt = prompts(chat)[0]
    (free,) = answer(chat, [prompt], None)
    stop_str, _ = stop_string_inside(tokenizer, free.token_ids)
    shown = io.StringIO()
    (stopped,) = answer(chat, [prompt], stop_str, StopStringStreamer(tokenizer, stop_str, shown))
    assert shown.getvalue().strip() == stopped.text and stop_str not in shown.getvalue()
    assert stopped.text  # something was answered before the stop


def test_model_vqa_answers_with_a_word_level_tokenizer(word_level_chat, tmp_path):
    """The user-visible failure: the runner crashed inside transformers before answering anything."""
    chat, folder = word_level_chat, word_level_chat[4]
    images = tmp_path / "images"
    images.mkdir()
    questions = tmp_path / "questions.jsonl"
    with open(questions, "w", encoding="utf-8") as handle:
        for index, (question, color) in enumerate(QUESTIONS):
            Image.new("RGB", (28, 28), color).save(images / f"{index}.png")
            handle.write(json.dumps({"question_id": index, "image": f"{index}.png", "text": question}) + "\n")
    answers = tmp_path / "answers.jsonl"
    result = subprocess.run(
        [sys.executable, "-m", "mvlm.eval.model_vqa", "--model-path", folder, "--question-file", str(questions),
         "--image-folder", str(images), "--answers-file", str(answers), "--device", "cpu", "--temperature", "0",
         "--max_new_tokens", str(MAX_NEW), "--batch-size", "2"],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 0, result.stderr
    got = [json.loads(line)["text"] for line in answers.read_text().splitlines()]
    expected = [generated.text for generated in answer(chat, prompts(chat), "</s>")]
    assert got == expected and all(got)
