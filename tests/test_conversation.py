"""Every template renders exactly as its source project does, through LLaVA's Conversation API; each
separator style is defined once, and both the prompt and the exported Jinja chat template follow it."""

import dataclasses

import pytest
from transformers import PreTrainedTokenizerFast

from mvlm import conversation
from mvlm.chat_format import LAYOUTS, Layout, SeparatorStyle
from mvlm.conversation import Piece, conv_templates, get_conversation
from mvlm.convert import chat_template

VICUNA = (
    "A chat between a curious user and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the user's questions."
)
LLAVA_HUMAN = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
LLAMA_SYS = (
    "You are a helpful language and vision assistant. You are able to understand the visual content that the "
    "user provides, and assist the user with a variety of tasks using natural language."
)

# Two turns, one image, the second answer left open: what every chat front-end renders.
EXPECTED_OPEN = {
    "vicuna_v1": f"{VICUNA} USER: <image>\nWhat is in the image? ASSISTANT: A cat.</s>USER: What color is it? ASSISTANT:",
    "llava_v1": f"{LLAVA_HUMAN} USER: <image>\nWhat is in the image? ASSISTANT: A cat.</s>USER: What color is it? ASSISTANT:",
    "phi": f"{VICUNA} USER: <image>\nWhat is in the image? ASSISTANT: A cat.<|endoftext|>USER: What color is it? ASSISTANT:",
    "gemma": f"{VICUNA} USER: <image>\nWhat is in the image? ASSISTANT: A cat.<eos>USER: What color is it? ASSISTANT:",
    "llava_llama_2": f"[INST] <<SYS>>\n{LLAMA_SYS}\n<</SYS>>\n\n<image>\nWhat is in the image? [/INST] A cat. </s>"
    "<s>[INST] What color is it? [/INST]",
    "mistral_instruct": "[INST] <image>\nWhat is in the image? [/INST] A cat. </s>[INST] What color is it? [/INST]",
    "chatml_direct": "<|im_start|>system\nAnswer the questions.<|im_end|><|im_start|>user\n<image>\nWhat is in the image?"
    "<|im_end|><|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nWhat color is it?<|im_end|>"
    "<|im_start|>assistant\n",
    "mpt": "<|im_start|>system\nA conversation between a user and an LLM-based AI assistant. The assistant gives "
    "helpful and honest answers.<|im_end|><|im_start|>user\n<image>\nWhat is in the image?<|im_end|>"
    "<|im_start|>assistant\nA cat.<|im_end|><|im_start|>user\nWhat color is it?<|im_end|><|im_start|>assistant\n",
    "phi3_chat": "<|user|>\n<image>\nWhat is in the image?<|end|>\n<|assistant|>\nA cat.<|end|>\n"
    "<|user|>\nWhat color is it?<|end|>\n<|assistant|>\n",
    "llama3": f"<|start_header_id|>system<|end_header_id|>\n\n{LLAMA_SYS}<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\n<image>\nWhat is in the image?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\nA cat.<|eot_id|>"
    "<|start_header_id|>user<|end_header_id|>\n\nWhat color is it?<|eot_id|>"
    "<|start_header_id|>assistant<|end_header_id|>\n\n",
}

CHATML_JINJA = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n{{ message['content'] }}<|im_end|>\n"
    "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def two_turns(name, tokenizer=None, close=False):
    conv = get_conversation(name, tokenizer)
    conv.append_message(conv.roles[0], "<image>\nWhat is in the image?")
    conv.append_message(conv.roles[1], "A cat.")
    conv.append_message(conv.roles[0], "What color is it?")
    conv.append_message(conv.roles[1], "Black." if close else None)
    return conv


def test_vicuna_v1_renders_the_llava_reference_string():
    expected = (
        "A chat between a curious user and an artificial intelligence assistant. The assistant gives helpful, "
        "detailed, and polite answers to the user's questions. USER: <image>\nWhat is in the image? ASSISTANT: "
        "A cat.</s>USER: What color is it? ASSISTANT: Black.</s>"
    )
    assert two_turns("vicuna_v1", close=True).get_prompt() == expected
    assert two_turns("v1", close=True).get_prompt() == expected


@pytest.mark.parametrize("name", sorted(EXPECTED_OPEN))
def test_template_renders_byte_for_byte(name):
    assert two_turns(name).get_prompt() == EXPECTED_OPEN[name]


def test_plain_is_image_tokens_then_caption_then_newline():
    conv = get_conversation("plain")
    conv.append_message(conv.roles[0], "<image>\nRender a clear and concise summary of the photo.")
    conv.append_message(conv.roles[1], "a cat on a mat")
    assert conv.get_prompt() == "<image>a cat on a mat\n"
    assert conv.pieces() == [Piece("<image>", False), Piece("a cat on a mat\n", True)]


def test_llava_api_copy_is_independent_and_exposes_separators():
    base = conv_templates["vicuna_v1"]
    conv = base.copy()
    conv.append_message(conv.roles[0], "hi")
    assert base.messages == [] and len(conv.messages) == 1
    assert conv.roles == ("USER", "ASSISTANT") and conv.sep == " " and conv.sep2 == "</s>"
    assert conv.stop_str == "</s>" and get_conversation("chatml_direct").stop_str == "<|im_end|>"
    # LLaVA's web demo appends (text, image, mode) tuples; only the text renders.
    conv.messages[0][1] = ("hi", None, "Default")
    conv.append_message(conv.roles[1], None)
    assert conv.get_prompt().endswith("USER: hi ASSISTANT:")


@pytest.mark.parametrize("name", sorted(EXPECTED_OPEN))
def test_pieces_join_to_the_prompt_and_targets_are_the_answers_with_end_markers(name):
    conv = two_turns(name, close=True)
    pieces = conv.pieces()
    assert "".join(piece.text for piece in pieces) == conv.get_prompt()
    targets = [piece.text.strip() for piece in pieces if piece.is_target]
    end = conv.stop_str
    assert targets == [f"A cat.{' ' if name in ('llava_llama_2', 'mistral_instruct') else ''}{end}",
                       f"Black.{' ' if name in ('llava_llama_2', 'mistral_instruct') else ''}{end}"]


def test_roles_must_alternate():
    conv = get_conversation("vicuna_v1")
    conv.append_message("ASSISTANT", "hello")
    with pytest.raises(ValueError, match="expected 'USER'"):
        conv.get_prompt()


def test_unknown_template_lists_the_known_ones():
    with pytest.raises(ValueError, match="vicuna_v1"):
        get_conversation("vicuna_v2")


def test_auto_uses_the_tokenizers_chat_template(tokenizers):
    tokenizer = tokenizers("bytelevel", False)
    with pytest.raises(ValueError, match="this tokenizer has none"):
        two_turns("auto", tokenizer).get_prompt()
    templated = PreTrainedTokenizerFast(tokenizer_object=tokenizer.backend_tokenizer, eos_token="<|endoftext|>")
    templated.chat_template = CHATML_JINJA
    conv = two_turns("auto", templated, close=True)
    assert conv.get_prompt() == (
        "<|im_start|>user\n<image>\nWhat is in the image?<|im_end|>\n<|im_start|>assistant\nA cat.<|im_end|>\n"
        "<|im_start|>user\nWhat color is it?<|im_end|>\n<|im_start|>assistant\nBlack.<|im_end|>\n"
    )
    assert [piece.text for piece in conv.pieces() if piece.is_target] == ["A cat.<|im_end|>", "Black.<|im_end|>"]
    assert two_turns("auto", templated).get_prompt().endswith("What color is it?<|im_end|>\n<|im_start|>assistant\n")


def test_only_an_assistant_turn_may_be_left_open():
    conv = get_conversation("vicuna_v1")
    conv.append_message(conv.roles[0], None)
    with pytest.raises(ValueError, match="only if it is the assistant's"):
        conv.get_prompt()


def test_every_separator_style_but_the_tokenizers_own_has_exactly_one_layout():
    """Each style is written once, in mvlm.chat_format.LAYOUTS; CHAT_TEMPLATE is the tokenizer's Jinja."""
    assert set(LAYOUTS) == set(SeparatorStyle) - {SeparatorStyle.CHAT_TEMPLATE}
    assert {conv.sep_style for conv in conv_templates.values()} == set(SeparatorStyle)
    assert chat_template.LAYOUTS is conversation.LAYOUTS is LAYOUTS  # the same definitions, not copies


def marked(layout: Layout) -> Layout:
    """`layout` with a marker in every field, so that a rendering that ignores a field shows it."""
    return dataclasses.replace(
        layout,
        prologue=("[prologue]", *layout.prologue),
        user=("[user]", *layout.user),
        first_user=None if layout.first_user is None else ("[first user]", *layout.first_user),
        assistant_header=("[header]", *layout.assistant_header),
        answer=("[answer]", *layout.answer),
        after_answer=(*layout.after_answer, "[after]"),
    )


@pytest.mark.parametrize("name", sorted(set(conv_templates) - {"auto"}))
def test_python_and_jinja_renderings_both_follow_an_edited_layout(tokenizers, monkeypatch, name):
    """Editing a style's one definition changes the prompt, the labels and the exported chat template
    alike: neither rendering spells the style out on its own."""
    style = conv_templates[name].sep_style
    monkeypatch.setitem(LAYOUTS, style, marked(LAYOUTS[style]))
    tokenizer = tokenizers("bytelevel", False)  # writes no BOS, so the Jinja renders exactly the prompt
    template = chat_template.chat_template_for(name, tokenizer)
    for close in (False, True):
        conv = two_turns(name, close=close)
        messages = [{"role": ("user", "assistant")[index % 2], "content": message}
                    for index, (_role, message) in enumerate(conv.messages) if message is not None]
        rendered = tokenizer.apply_chat_template(messages, chat_template=template, tokenize=False,
                                                 add_generation_prompt=not close)
        assert rendered == conv.get_prompt()
        targets = [piece.text for piece in conv.pieces() if piece.is_target]
        assert len(targets) == (2 if close else 1) and all(text.startswith("[answer]") for text in targets)
    prompt = conv.get_prompt()
    expected = {"[prologue]", "[user]", "[header]", "[answer]", "[after]"}
    if LAYOUTS[style].first_user is not None:
        expected.add("[first user]")
    assert all(marker in prompt for marker in expected), prompt
