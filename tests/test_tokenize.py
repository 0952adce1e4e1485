"""Exact labels: targets are the answers plus the end-of-turn marker, everything else -100."""

import pytest
import torch

from mvlm.constants import IGNORE_INDEX
from mvlm.conversation import get_conversation
from mvlm.data.tokenize import (
    SampleError,
    bos_prefix,
    conversation_from_sample,
    image_token_id,
    tokenize_prompt,
    tokenize_sample,
)
from tests.helpers import tiny

N = 3  # image tokens per image in these tests
TOKENIZERS = [("sentencepiece", True), ("sentencepiece", False), ("bytelevel", False), ("bytelevel", True)]

SAMPLE = {
    "id": "cat-1",
    "image": "cat.jpg",
    "conversations": [
        {"from": "human", "value": "What is in the image?\n<image>"},
        {"from": "gpt", "value": "A cat."},
        {"from": "human", "value": "What color is it?"},
        {"from": "gpt", "value": "Black."},
    ],
}

# What the model must learn to write, per template: each answer and the template's end-of-turn marker.
EXPECTED_TARGETS = {
    "vicuna_v1": [" A cat.</s>", " Black.</s>"],
    "llava_v1": [" A cat.</s>", " Black.</s>"],
    "phi": [" A cat.<|endoftext|>", " Black.<|endoftext|>"],
    "gemma": [" A cat.<eos>", " Black.<eos>"],
    "llava_llama_2": [" A cat. </s>", " Black. </s>"],
    "mistral_instruct": [" A cat. </s>", " Black. </s>"],
    "chatml_direct": ["A cat.<|im_end|>", "Black.<|im_end|>"],
    "mpt": ["A cat.<|im_end|>", "Black.<|im_end|>"],
    "phi3_chat": ["A cat.<|end|>", "Black.<|end|>"],
    "llama3": ["A cat.<|eot_id|>", "Black.<|eot_id|>"],
    "plain": ["A cat.\nBlack.\n"],
}


def target_spans(result):
    """Runs of consecutive target positions, as id lists."""
    spans, current = [], []
    for token, label in zip(result["input_ids"].tolist(), result["labels"].tolist()):
        if label != IGNORE_INDEX:
            assert label == token
            current.append(token)
        elif current:
            spans.append(current)
            current = []
    return spans + ([current] if current else [])


def decoded(tokenizer, ids):
    return tokenizer.decode(ids, clean_up_tokenization_spaces=False)


@pytest.mark.parametrize("kind,with_bos", TOKENIZERS)
@pytest.mark.parametrize("template", sorted(EXPECTED_TARGETS))
def test_label_mask_is_exactly_the_answers(tokenizers, kind, with_bos, template):
    tokenizer = tokenizers(kind, with_bos)
    result = tokenize_sample(SAMPLE, tokenizer, template, N)
    expected = EXPECTED_TARGETS[template]
    if kind == "sentencepiece":  # SentencePiece decoding drops the leading space of a text's first token
        expected = [text.lstrip(" ") for text in expected]
    assert [decoded(tokenizer, span) for span in target_spans(result)] == expected
    # Image tokens: exactly N, never targets; BOS by the tokenizer's own convention, and only once.
    image_id = image_token_id(tokenizer)
    ids = result["input_ids"].tolist()
    assert ids.count(image_id) == N and result["num_images"] == 1
    assert all(result["labels"][result["input_ids"] == image_id] == IGNORE_INDEX)
    bos = tokenizer.bos_token_id
    assert (ids[0] == bos) == with_bos
    prompt = conversation_from_sample(SAMPLE, template).get_prompt()
    assert ids.count(bos) == int(with_bos) + prompt.count(tokenizer.bos_token)


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml_direct", "llava_llama_2", "phi3_chat", "llama3"])
def test_ids_decode_back_to_the_rendered_prompt(tokenizers, template):
    """With a byte-level tokenizer decoding is lossless: the ids are the prompt, images expanded in place."""
    tokenizer = tokenizers("bytelevel", False)
    result = tokenize_sample(SAMPLE, tokenizer, template, N)
    conv = get_conversation(template)
    conv.append_message(conv.roles[0], "<image>\nWhat is in the image?")
    conv.append_message(conv.roles[1], "A cat.")
    conv.append_message(conv.roles[0], "What color is it?")
    conv.append_message(conv.roles[1], "Black.")
    assert decoded(tokenizer, result["input_ids"].tolist()) == conv.get_prompt().replace("<image>", "<image>" * N)


@pytest.mark.parametrize("kind,with_bos", TOKENIZERS)
@pytest.mark.parametrize("template", sorted(set(EXPECTED_TARGETS) - {"plain"}))
def test_ids_equal_the_whole_prompt_tokenized_at_once(tokenizers, kind, with_bos, template):
    """The ids a LLaVA-trained model (or transformers' processor) reads for the same text: cutting the text
    where labels change must not change its tokens. (`plain` drops the user's words, so it has no whole
    prompt to compare with.)"""
    tokenizer = tokenizers(kind, with_bos)
    result = tokenize_sample(SAMPLE, tokenizer, template, 1)
    prompt = conversation_from_sample(SAMPLE, template).get_prompt()
    assert result["input_ids"].tolist() == tokenizer(prompt)["input_ids"]


@pytest.mark.parametrize("kind,with_bos", TOKENIZERS)
@pytest.mark.parametrize("template", ["vicuna_v1", "phi", "chatml_direct", "llava_llama_2", "phi3_chat", "plain"])
def test_inference_prompt_is_the_training_prefix(tokenizers, kind, with_bos, template):
    """Training and inference tokenize alike: the prompt ids are the sample's ids up to its first target."""
    tokenizer = tokenizers(kind, with_bos)
    one_turn = dict(SAMPLE, conversations=SAMPLE["conversations"][:2])
    result = tokenize_sample(one_turn, tokenizer, template, N)
    first_target = int((result["labels"] != IGNORE_INDEX).nonzero()[0])
    conv = get_conversation(template)
    conv.append_message(conv.roles[0], "<image>\nWhat is in the image?")
    prompt = tokenize_prompt(conv, tokenizer, N)
    assert prompt.tolist() == result["input_ids"][:first_target].tolist()


def test_image_tag_moves_to_the_start_of_its_turn_and_missing_tag_goes_first(tokenizers):
    tokenizer = tokenizers("bytelevel", False)
    tagged = tokenize_sample(SAMPLE, tokenizer, "vicuna_v1", N)
    untagged = dict(SAMPLE, conversations=[dict(SAMPLE["conversations"][0], value="What is in the image?")]
                    + SAMPLE["conversations"][1:])
    assert torch.equal(tokenize_sample(untagged, tokenizer, "vicuna_v1", N)["input_ids"], tagged["input_ids"])
    text = decoded(tokenizer, tagged["input_ids"].tolist())
    assert "USER: " + "<image>" * N + "\nWhat is in the image? ASSISTANT:" in text


def test_multiple_images_in_order_with_per_image_counts(tokenizers):
    tokenizer = tokenizers("bytelevel", False)
    sample = {
        "id": "two",
        "image": ["a.jpg", "b.jpg"],
        "conversations": [
            {"from": "human", "value": "<image> Compare <image> these."},
            {"from": "gpt", "value": "Same."},
        ],
    }
    result = tokenize_sample(sample, tokenizer, "vicuna_v1", [2, 5])
    text = decoded(tokenizer, result["input_ids"].tolist())
    assert "USER: " + "<image>" * 2 + "\n" + "<image>" * 5 + "\nCompare  these. ASSISTANT:" in text
    assert result["num_images"] == 2


def test_text_only_sample_has_no_image_tokens(tokenizers):
    tokenizer = tokenizers("sentencepiece", True)
    sample = {"id": "t", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello."}]}
    result = tokenize_sample(sample, tokenizer, "vicuna_v1", N)
    assert image_token_id(tokenizer) not in result["input_ids"].tolist() and result["num_images"] == 0
    assert [decoded(tokenizer, span) for span in target_spans(result)] == ["Hello.</s>"]


def test_system_turn_replaces_the_template_system(tokenizers):
    tokenizer = tokenizers("bytelevel", False)
    sample = {"id": "s", "conversations": [{"from": "system", "value": "Be brief."}] + SAMPLE["conversations"][2:]}
    text = decoded(tokenizer, tokenize_sample(sample, tokenizer, "vicuna_v1", N)["input_ids"].tolist())
    assert text == "Be brief. USER: What color is it? ASSISTANT: Black.</s>"


@pytest.mark.parametrize(
    "conversations,image,message",
    [
        ([{"from": "human", "value": "<image><image> hi"}, {"from": "gpt", "value": "x"}], "a.jpg", "2 <image> tag"),
        ([{"from": "gpt", "value": "x"}, {"from": "human", "value": "hi"}], None, "turn 0 is from 'gpt'"),
        ([{"from": "human", "value": "hi"}], None, "must end with an assistant"),
        ([], None, "non-empty list"),
        ([{"from": "human"}, {"from": "gpt", "value": "x"}], None, "turn 0 must be"),
        ([{"from": "human", "value": "hi"}, {"from": "gpt", "value": "<image>"}], "a.jpg", "assistant's"),
    ],
)
def test_bad_samples_raise_an_error_naming_the_sample(tokenizers, conversations, image, message):
    sample = {"id": "bad-7", "conversations": conversations}
    if image:
        sample["image"] = image
    with pytest.raises(SampleError, match=f"sample bad-7: .*{message}"):
        tokenize_sample(sample, tokenizers("bytelevel", False), "vicuna_v1", N)


def test_truncation_never_cuts_inside_an_image_block(tokenizers):
    tokenizer = tokenizers("bytelevel", False)
    sample = {
        "id": "long",
        "image": ["a.jpg", "b.jpg"],
        "conversations": [
            {"from": "human", "value": "<image>\nFirst?"},
            {"from": "gpt", "value": "One."},
            {"from": "human", "value": "<image>\nSecond?"},
            {"from": "gpt", "value": "Two."},
        ],
    }
    full = tokenize_sample(sample, tokenizer, "vicuna_v1", 8)
    image_id = image_token_id(tokenizer)
    ids = full["input_ids"].tolist()
    second_block = [index for index, token in enumerate(ids) if token == image_id][8:]
    limit = second_block[3]  # falls inside the second image's tokens
    cut = tokenize_sample(sample, tokenizer, "vicuna_v1", 8, max_length=limit)
    assert cut["input_ids"].tolist() == ids[: second_block[0]] and cut["num_images"] == 1
    assert cut["labels"].tolist() == full["labels"].tolist()[: second_block[0]]
    assert len(cut["input_ids"]) <= limit


def test_prompt_that_cannot_fit_names_the_sample(tokenizers):
    with pytest.raises(SampleError, match=r"sample cat-1: its prompt alone takes \d+ tokens"):
        tokenize_sample(SAMPLE, tokenizers("bytelevel", False), "vicuna_v1", 64, max_length=60)


def test_bos_prefix_follows_the_tokenizer(tokenizers):
    assert bos_prefix(tokenizers("sentencepiece", True)) == [tokenizers("sentencepiece", True).bos_token_id]
    assert bos_prefix(tokenizers("bytelevel", False)) == []


def test_tokenizer_without_image_token_is_refused():
    with pytest.raises(ValueError, match="add_image_token"):
        tokenize_sample(SAMPLE, tiny.train_tokenizer("bytelevel", False), "vicuna_v1", N)
