"""Questions to model inputs: the checkpoint's template, tokenized exactly as training tokenized it."""

from __future__ import annotations

from typing import Any, NamedTuple, Sequence

import torch
from PIL import Image
from transformers import PreTrainedTokenizerBase

from mvlm.conversation import Conversation, conv_templates, get_conversation
from mvlm.data.images import process_images
from mvlm.data.tokenize import tokenize_prompt
from mvlm.errors import FlagError
from mvlm.model.modeling import LlavaForCausalLM


def resolve_conv_mode(model: LlavaForCausalLM, conv_mode: str | None, model_path: str) -> str:
    """The template to prompt with: `conv_mode` when given, else the one the checkpoint was trained with.

    Never guessed from the folder name (LLaVA's habit): a checkpoint that stores none must be told.
    """
    name = conv_mode or getattr(model.config, "conv_mode", None)
    if name is None:
        raise FlagError(
            f"the checkpoint {model_path} does not say which chat template it was trained with (no conv_mode in "
            f"its config.json); pass --conv-mode NAME, one of: {', '.join(sorted(conv_templates))}"
        )
    if name not in conv_templates:
        source = "--conv-mode" if conv_mode else f"conv_mode in {model_path}/config.json"
        raise FlagError(
            f"unknown chat template {name!r} ({source}); choose one of: {', '.join(sorted(conv_templates))}"
        )
    return name


def new_conversation(conv_mode: str, tokenizer: PreTrainedTokenizerBase) -> Conversation:
    """An empty conversation of the template (the `auto` template renders with the tokenizer's chat template)."""
    return get_conversation(conv_mode, tokenizer)


class EncodedPrompt(NamedTuple):
    """A prompt ready for `generate_answers`: its ids (one image-token run per image) and its pixel values."""

    input_ids: torch.LongTensor
    """1-D ids, image tokens expanded."""
    pixel_values: torch.Tensor | list[torch.Tensor] | None
    """One entry per image, in prompt order: (3, H, W), or (views, 3, H, W) for anyres; None without images."""


def encode_prompt(
    conversation: Conversation,
    images: Sequence[Image.Image],
    tokenizer: PreTrainedTokenizerBase,
    image_processor: Any,
    model: LlavaForCausalLM,
    pixel_values: torch.Tensor | list[torch.Tensor] | None = None,
) -> EncodedPrompt:
    """Ids and pixel values of a conversation that ends with a user turn (its `<image>` tags, one per image).

    Images are preprocessed with the checkpoint's `image_aspect_ratio` (and anyres grid), as in training.
    Pass `pixel_values` instead of `images` to reuse images already processed (a chat's later turns).
    """
    if pixel_values is None and images:
        pixel_values = process_images(
            images,
            image_processor,
            getattr(model.config, "image_aspect_ratio", "pad"),
            getattr(model.config, "image_grid_pinpoints", None),
        )
    per_image = list(pixel_values) if pixel_values is not None else []
    counts = [model.num_image_tokens * (image.shape[0] if image.dim() == 4 else 1) for image in per_image]
    input_ids = tokenize_prompt(conversation, tokenizer, counts or model.num_image_tokens)
    return EncodedPrompt(input_ids, pixel_values if per_image else None)
