"""The two things data needs from a model: its tokenizer, set up for images, and its image processor.

Training, the data check, chat and evaluation all read a checkpoint's tokenizer and image processor
the same way, so a checkpoint prompts exactly as it was trained.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken
from transformers import AutoImageProcessor, AutoTokenizer, PreTrainedTokenizerBase

from mvlm.constants import DEFAULT_IMAGE_TOKEN


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Make `<image>` a special token of `tokenizer` (kept whole, never split) and return its id."""
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Batches need a pad token; like LLaVA, reuse unk (or else eos) when the LLM defines none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token


def load_tokenizer(folder: str) -> PreTrainedTokenizerBase:
    """An LLM's tokenizer with `<image>` and a pad token, as a fresh model is built with."""
    tokenizer = AutoTokenizer.from_pretrained(folder)
    add_image_token(tokenizer)
    ensure_pad_token(tokenizer)
    return tokenizer


def load_processors(folder: str) -> tuple[PreTrainedTokenizerBase, Any]:
    """(tokenizer, image processor) saved with a checkpoint; PIL image processors (no torchvision needed)."""
    return AutoTokenizer.from_pretrained(folder), AutoImageProcessor.from_pretrained(folder, backend="pil")
