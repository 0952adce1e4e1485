"""A LLaVA conversation -> input_ids and labels, built piece by piece.

Each piece of the rendered template (`Conversation.pieces()`) is tokenized on its own and the ids are
concatenated; a piece that is an assistant answer keeps its ids as labels, every other id is
IGNORE_INDEX. Nothing is rendered whole and then subtracted, so no tokenizer quirk can shift a mask.

A piece is tokenized as it reads after a special token (`<image>` itself is the anchor that is
stripped again), so SentencePiece tokenizers do not sprout a stray leading "▁" between pieces; only
the very first piece is tokenized as the start of a text. A leading BOS is added exactly when the
tokenizer adds one by its own convention.

The same code builds inference prompts (`tokenize_prompt`), so training and inference tokenize alike.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from transformers import PreTrainedTokenizerBase

from mvlm.constants import DEFAULT_IMAGE_TOKEN, IGNORE_INDEX
from mvlm.conversation import Conversation, Piece, get_conversation
from mvlm.data.validate import SampleError, sample_id, sample_images, validate_conversation  # noqa: F401 (re-exported)


def image_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """Id of `<image>`, which must be a token of its own (mvlm.model.builder.add_image_token adds it)."""
    token_id = tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)
    if token_id is None or token_id == tokenizer.unk_token_id:
        raise ValueError(
            f"the tokenizer has no {DEFAULT_IMAGE_TOKEN} token; add it with mvlm.model.builder.add_image_token"
        )
    return token_id


def bos_prefix(tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """The ids the tokenizer itself puts before a text (its BOS convention), often [bos] or []."""
    with_special = tokenizer.encode("a", add_special_tokens=True)
    without = tokenizer.encode("a", add_special_tokens=False)
    for start in range(len(with_special) - len(without) + 1):
        if with_special[start : start + len(without)] == without:
            return with_special[:start]
    return []


def conversation_from_sample(
    sample: dict[str, Any], conv_mode: str | Conversation, tokenizer: PreTrainedTokenizerBase | None = None
) -> Conversation:
    """LLaVA `conversations` -> a Conversation of the template `conv_mode`, `<image>` placed as LLaVA does.

    Each turn's `<image>` tags move to the start of that turn, each followed by a newline; a sample with
    images but no tag gets them at the start of its first turn. A leading `system` message replaces the
    template's system prompt. A sample that breaks LLaVA's rules raises SampleError (mvlm.data.validate).
    """
    conv = get_conversation(conv_mode, tokenizer) if isinstance(conv_mode, str) else conv_mode.copy()
    system, turns = validate_conversation(sample)
    if system is not None:
        conv.system = system
    num_images = len(sample_images(sample))
    tags = sum(turn["value"].count(DEFAULT_IMAGE_TOKEN) for turn in turns)
    for index, turn in enumerate(turns):
        value = turn["value"]
        count = value.count(DEFAULT_IMAGE_TOKEN)
        if index == 0 and num_images and not tags:
            count = num_images
        if count:
            value = (DEFAULT_IMAGE_TOKEN + "\n") * count + value.replace(DEFAULT_IMAGE_TOKEN, "").strip()
        conv.append_message(conv.roles[index % 2], value)
    return conv


class TokenizedConversation(NamedTuple):
    input_ids: list[int]
    labels: list[int]
    image_blocks: list[tuple[int, int]]
    """(start, end) of each image's run of image-token ids, in order."""


def tokenize_pieces(
    pieces: Sequence[Piece], tokenizer: PreTrainedTokenizerBase, num_image_tokens: int | Sequence[int]
) -> TokenizedConversation:
    """Ids and labels of a rendered conversation; the i-th `<image>` becomes its image's run of image ids.

    `num_image_tokens` is one count for every image, or one per image (anyres images differ in tiles).
    """
    image_id = image_token_id(tokenizer)
    prefix = bos_prefix(tokenizer)
    input_ids = list(prefix)
    labels = [IGNORE_INDEX] * len(input_ids)
    blocks: list[tuple[int, int]] = []
    for piece in _merge_neighbours(pieces):
        for index, chunk in enumerate(piece.text.split(DEFAULT_IMAGE_TOKEN)):
            if index > 0:
                count = _image_token_count(num_image_tokens, len(blocks))
                blocks.append((len(input_ids), len(input_ids) + count))
                input_ids += [image_id] * count
                labels += [IGNORE_INDEX] * count
            if not chunk:
                continue
            at_start = len(input_ids) == len(prefix)  # nothing but the BOS so far
            ids = _encode_chunk(tokenizer, chunk, image_id, at_start)
            input_ids += ids
            labels += ids if piece.is_target else [IGNORE_INDEX] * len(ids)
    return TokenizedConversation(input_ids, labels, blocks)


def _merge_neighbours(pieces: Sequence[Piece]) -> list[Piece]:
    """Join neighbouring pieces that are both targets or both not, so the text is cut only where the
    labels change. A template's own cuts (a separator " " ending one piece, the role "ASSISTANT:" the
    next) would otherwise split a word from its leading space: "▁", "ASSISTANT:" instead of the
    "▁ASSISTANT:" that the whole prompt, and so any LLaVA-trained model, reads."""
    merged: list[Piece] = []
    for piece in pieces:
        if merged and merged[-1].is_target == piece.is_target:
            merged[-1] = Piece(merged[-1].text + piece.text, piece.is_target)
        else:
            merged.append(piece)
    return merged


def _image_token_count(num_image_tokens: int | Sequence[int], image_index: int) -> int:
    if isinstance(num_image_tokens, int):
        return num_image_tokens
    if image_index >= len(num_image_tokens):
        raise ValueError(f"the conversation has more {DEFAULT_IMAGE_TOKEN} tags than the {len(num_image_tokens)} "
                         "image token counts given")
    return num_image_tokens[image_index]


def _encode_chunk(tokenizer: PreTrainedTokenizerBase, text: str, anchor_id: int, at_start: bool) -> list[int]:
    """Ids of `text` at the start of the sequence, or as it reads right after a special token."""
    if at_start:
        return tokenizer.encode(text, add_special_tokens=False)
    ids = tokenizer.encode(DEFAULT_IMAGE_TOKEN + text, add_special_tokens=False)
    if not ids or ids[0] != anchor_id:
        raise ValueError(f"the tokenizer did not keep {DEFAULT_IMAGE_TOKEN} whole; add it as a special token")
    return ids[1:]


def tokenize_sample(
    sample: dict[str, Any],
    tokenizer: PreTrainedTokenizerBase,
    conv_mode: str | Conversation,
    num_image_tokens: int | Sequence[int],
    max_length: int | None = None,
) -> dict[str, Any]:
    """One LLaVA sample -> {"input_ids", "labels", "num_images"}.

    `num_image_tokens`: one count for all images or one per image. `num_images` is how many of the
    sample's images are still in `input_ids` after truncation: a cut never splits an image's run of
    tokens, and images past the cut are dropped with their tokens.
    """
    name = sample_id(sample)
    conv = conversation_from_sample(sample, conv_mode, tokenizer)  # validates the sample's structure
    tokens = tokenize_pieces(conv.pieces(), tokenizer, num_image_tokens)
    cut = len(tokens.input_ids) if max_length is None else min(max_length, len(tokens.input_ids))
    for start, end in tokens.image_blocks:
        if start < cut < end:
            cut = start
    labels = tokens.labels[:cut]
    if all(label == IGNORE_INDEX for label in labels):
        if any(label != IGNORE_INDEX for label in tokens.labels):
            first_target = next(index for index, label in enumerate(tokens.labels) if label != IGNORE_INDEX)
            raise SampleError(
                f"sample {name}: its prompt alone takes {first_target} tokens (image tokens included), leaving no "
                f"room for the answer within model_max_length={max_length}; raise --model_max_length or shorten it",
                "too_long",
            )
        raise SampleError(f"sample {name}: no answer token to learn from (every answer is empty)", "empty_answer")
    return {
        "input_ids": torch.tensor(tokens.input_ids[:cut], dtype=torch.long),
        "labels": torch.tensor(labels, dtype=torch.long),
        "num_images": sum(1 for _start, end in tokens.image_blocks if end <= cut),
    }


def tokenize_prompt(
    conversation: Conversation, tokenizer: PreTrainedTokenizerBase, num_image_tokens: int | Sequence[int]
) -> torch.LongTensor:
    """Ids of an inference prompt (the conversation ends with an open assistant turn), as training builds them."""
    if len(conversation.messages) % 2 == 1:
        conversation = conversation.copy()
        conversation.append_message(conversation.roles[1], None)
    elif not conversation.messages or conversation.messages[-1][1] is not None:
        raise ValueError("an inference prompt must end with a user message (or an open assistant turn)")
    return torch.tensor(tokenize_pieces(conversation.pieces(), tokenizer, num_image_tokens).input_ids)
