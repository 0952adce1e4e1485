"""The demo's kind of checkpoint (a Llama-style LM, a one-layer CLIP-style tower read at feature layer 0, the
mistral_instruct template) exported with `python -m mvlm.convert.to_hf` runs in transformers' own
LlavaForConditionalGeneration: its AutoProcessor and exported chat template build the prompt, and its greedy
answers to image questions are exactly mvlm's."""

import json
import os
import random

import pytest
import torch
from transformers import AutoProcessor, LlavaForConditionalGeneration

from mvlm.convert.to_hf import main as to_hf
from mvlm.demo import data as demo_data
from mvlm.demo.models import LanguageModelSize, VisionTowerSize, save_language_model, save_vision_tower
from mvlm.loading import load_pretrained_model
from mvlm.model.builder import build_model, save_checkpoint
from mvlm.inference import encode_prompt, generate_answers, generation_config, new_conversation
from tests.helpers.chat_model import spread_weights
from tests.helpers.tiny import CORPUS

MAX_NEW_TOKENS = 6


def demo_questions(count: int, seed: int = 0) -> list[tuple[object, str]]:
    """(image, question) pairs as the demo asks them, one category after another."""
    rng = random.Random(seed)
    pairs = []
    for index in range(count):
        scene, question, _answer = demo_data.ask_category(demo_data.CATEGORIES[index % len(demo_data.CATEGORIES)], rng)
        pairs.append((demo_data.draw_scene(scene, rng), question))
    return pairs


@pytest.fixture(scope="module")
def demo_style_checkpoint(tmp_path_factory) -> str:
    """A trained-looking checkpoint shaped like the demo's: weights spread so that answers follow the image."""
    root = tmp_path_factory.mktemp("demo-style")
    corpus = CORPUS * 20 + [question for _image, question in demo_questions(40, seed=1)]
    llm = save_language_model(str(root / "llm"), corpus, LanguageModelSize(hidden_size=64, num_hidden_layers=2,
                              intermediate_size=128), vocab_size=600, control_tokens=("[INST]", "[/INST]"))
    tower = save_vision_tower(str(root / "tower"), VisionTowerSize(hidden_size=32, intermediate_size=64,
                                                                   num_attention_heads=2))
    model, tokenizer, image_processor = build_model(llm, tower, vision_feature_layer=0)
    assert model.config.vision_config.num_hidden_layers == 1
    spread_weights(model, std=0.3, seed=1)
    model.config.conv_mode = "mistral_instruct"
    folder = str(root / "finetune")
    save_checkpoint(folder, model, tokenizer, image_processor)
    return folder


def mvlm_answers(checkpoint: str, pairs: list[tuple[object, str]]) -> list[tuple[list[int], list[int]]]:
    """mvlm's prompt ids and greedy answer tokens (as its CLI and model_vqa produce them), one question at a time."""
    tokenizer, model, image_processor, _ = load_pretrained_model(checkpoint)
    config = generation_config(model, tokenizer, max_new_tokens=MAX_NEW_TOKENS)
    answers = []
    for image, question in pairs:
        conv = new_conversation("mistral_instruct", tokenizer)
        conv.append_message(conv.roles[0], "<image>\n" + question)
        prompt = encode_prompt(conv, [image], tokenizer, image_processor, model)
        (generated,) = generate_answers(model, tokenizer, [prompt], config)
        answers.append((prompt.input_ids.tolist(), generated.token_ids))
    return answers


def test_demo_checkpoint_runs_in_transformers_with_mvlm_answers(demo_style_checkpoint, tmp_path):
    out = str(tmp_path / "hf")
    to_hf(["--model-path", demo_style_checkpoint, "--save-path", out])
    with open(os.path.join(out, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["vision_feature_layer"] == -2  # layer 0 of a one-layer tower's two hidden states
    hf = LlavaForConditionalGeneration.from_pretrained(out).eval()
    processor = AutoProcessor.from_pretrained(out)
    pairs = demo_questions(4)
    pairs += [(image, "How many shapes are there?") for image, _question in pairs]
    expected = mvlm_answers(demo_style_checkpoint, pairs)
    same_question = {tuple(answer) for _prompt, answer in expected[4:]}
    assert len(same_question) > 1, "answers that ignore the image would prove nothing"
    for (image, question), (prompt, answer) in zip(pairs, expected):
        content = [{"type": "image", "image": image}, {"type": "text", "text": question}]
        messages = [{"role": "user", "content": content}]
        inputs = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=True, return_dict=True,
                                               return_tensors="pt")
        assert inputs["input_ids"][0].tolist() == prompt
        with torch.no_grad():
            tokens = hf.generate(**inputs, max_new_tokens=MAX_NEW_TOKENS, do_sample=False)
        assert tokens[0, inputs["input_ids"].shape[1]:].tolist() == answer, question
