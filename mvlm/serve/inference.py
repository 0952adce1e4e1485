"""Prompt -> answer, shared by the chat CLI and the benchmark runners.

One path for every front-end, so a chat answer and a benchmark answer to the same question are the same
tokens: the checkpoint's own template (`model.config.conv_mode`) and aspect-ratio mode, prompts tokenized
exactly as training tokenized them, greedy unless a temperature is given, and a stop at the template's
stop string. Batches are left-padded, so every row predicts its next token from its own last prompt token
and a batch gives the same tokens as one question at a time. (Not bit for bit: other batch shapes round
differently, about 1e-5 of the logits in float32, so a token can differ only where two candidates tie
that closely; measured once in 480 greedy tokens of a random tiny model, never in its short answers.)
"""

from __future__ import annotations

import copy
from typing import Any, NamedTuple, Sequence, TextIO

import torch
from PIL import Image
from transformers import (
    GenerationConfig,
    PreTrainedTokenizerBase,
    StoppingCriteria,
    StoppingCriteriaList,
    StopStringCriteria,
    TextStreamer,
)

from mvlm.conversation import Conversation, conv_templates, get_conversation
from mvlm.data.images import process_images
from mvlm.data.tokenize import tokenize_prompt
from mvlm.model.builder import load_pretrained_model
from mvlm.model.modeling import LlavaForCausalLM


class CheckpointError(ValueError):
    """A checkpoint that cannot be loaded; the message names the folder and the cause."""


def load_for_inference(
    model_path: str, model_base: str | None, device: str, load_8bit: bool = False, load_4bit: bool = False
) -> tuple[PreTrainedTokenizerBase, LlavaForCausalLM, Any]:
    """(tokenizer, model, image_processor) in eval mode on `device`; any failure is one CheckpointError."""
    try:
        tokenizer, model, image_processor, _ = load_pretrained_model(
            model_path, model_base, load_8bit=load_8bit, load_4bit=load_4bit, device=device
        )
    except Exception as error:  # noqa: BLE001 - whatever breaks while reading a checkpoint is reported as such
        raise CheckpointError(f"cannot load the checkpoint {model_path}: {error}") from error
    return tokenizer, model, image_processor


def default_device() -> str:
    """CUDA when there is a GPU, else the CPU (MPS is used only when asked for: `--device mps`)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """`device` if this machine has it; a clear error instead of a failure deep inside model loading."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"--device {device!r} is not a device; use cpu, cuda or mps") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise ValueError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")
    return device


def resolve_conv_mode(model: LlavaForCausalLM, conv_mode: str | None, model_path: str) -> str:
    """The template to prompt with: `conv_mode` when given, else the one the checkpoint was trained with.

    Never guessed from the folder name (LLaVA's habit): a checkpoint that stores none must be told.
    """
    name = conv_mode or getattr(model.config, "conv_mode", None)
    if name is None:
        raise ValueError(
            f"the checkpoint {model_path} does not say which chat template it was trained with (no conv_mode in "
            f"its config.json); pass --conv-mode NAME, one of: {', '.join(sorted(conv_templates))}"
        )
    if name not in conv_templates:
        source = "--conv-mode" if conv_mode else f"conv_mode in {model_path}/config.json"
        raise ValueError(
            f"unknown chat template {name!r} ({source}); choose one of: {', '.join(sorted(conv_templates))}"
        )
    return name


def new_conversation(conv_mode: str, tokenizer: PreTrainedTokenizerBase) -> Conversation:
    """An empty conversation of the template (the `auto` template renders with the tokenizer's chat template)."""
    return get_conversation(conv_mode, tokenizer)


def input_device(model: LlavaForCausalLM) -> torch.device:
    """Where the prompt ids must go: the device of the token embeddings (device maps may spread the rest)."""
    return model.get_input_embeddings().weight.device


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


def generation_config(
    model: LlavaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    temperature: float = 0.0,
    top_p: float | None = None,
    num_beams: int = 1,
    max_new_tokens: int = 128,
    stop_str: str | None = None,
) -> GenerationConfig:
    """The checkpoint's generation config with LLaVA's decoding flags on top.

    Temperature 0 means greedy (LLaVA's `do_sample = temperature > 0`); the sampling settings a checkpoint
    may ship (e.g. Vicuna's temperature 0.9) are cleared then, so greedy really is greedy.
    """
    if temperature < 0:
        raise ValueError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    if num_beams < 1 or max_new_tokens < 1:
        raise ValueError(f"--num_beams and --max_new_tokens must be >= 1, got {num_beams} and {max_new_tokens}")
    config = copy.deepcopy(model.generation_config)
    sampling = temperature > 0
    config.update(
        do_sample=sampling,
        temperature=temperature if sampling else None,
        top_p=top_p if sampling else None,
        top_k=config.top_k if sampling else None,
        num_beams=num_beams,
        max_new_tokens=max_new_tokens,
        pad_token_id=tokenizer.pad_token_id,
        stop_strings=[stop_str] if stop_str else None,
    )
    if config.eos_token_id is None:
        config.eos_token_id = tokenizer.eos_token_id
    return config


class Generated(NamedTuple):
    token_ids: list[int]
    """The new tokens of this row as generated (a batch row that finished early is followed by pad ids)."""
    text: str
    """Decoded without special tokens, cut at the stop string, stripped."""


def cut_at_stop(text: str, stop_str: str | None) -> str:
    """`text` up to the first `stop_str` (the model may write the stop string, or run past it in a batch)."""
    if stop_str and stop_str in text:
        text = text[: text.index(stop_str)]
    return text.strip()


def left_padded_batch(
    prompts: Sequence[EncodedPrompt], pad_token_id: int, device: torch.device
) -> tuple[torch.LongTensor, torch.LongTensor]:
    """(input_ids, attention_mask), each row padded on the left to the longest prompt."""
    length = max(len(prompt.input_ids) for prompt in prompts)
    input_ids = torch.full((len(prompts), length), pad_token_id, dtype=torch.long)
    attention_mask = torch.zeros((len(prompts), length), dtype=torch.long)
    for row, prompt in enumerate(prompts):
        input_ids[row, length - len(prompt.input_ids) :] = prompt.input_ids
        attention_mask[row, length - len(prompt.input_ids) :] = 1
    return input_ids.to(device), attention_mask.to(device)


def batch_pixel_values(
    prompts: Sequence[EncodedPrompt], device: torch.device
) -> torch.Tensor | list[torch.Tensor] | None:
    """Every image of the batch in row order (the order the model fills `<image>` runs in); None if none."""
    images = [image for prompt in prompts if prompt.pixel_values is not None for image in prompt.pixel_values]
    if not images:
        return None
    if all(image.shape == images[0].shape for image in images):
        return torch.stack(images).to(device)
    return [image.to(device) for image in images]  # anyres images with different numbers of views


class DecodedTextStop(StoppingCriteria):
    """Stops each row once its decoded text contains the stop string.

    transformers' `StopStringCriteria` matches the stop string against the token strings of the vocabulary,
    and cannot be built for tokenizers whose vocabulary it cannot read back as text (word-level and
    WordPiece tokenizers raise a ValueError). Decoding the generated tokens works for every tokenizer the
    answer is decoded with anyway; special tokens are kept so that a stop string such as `</s>` is seen.
    The criterion sees only generated ids: `LlavaForCausalLM.generate` hands the language model embeddings,
    not prompt ids.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_str: str):
        self.tokenizer = tokenizer
        self.stop_str = stop_str

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor, **kwargs: Any) -> torch.BoolTensor:
        texts = self.tokenizer.batch_decode(input_ids.tolist(), skip_special_tokens=False)
        return torch.tensor([self.stop_str in text for text in texts], dtype=torch.bool, device=input_ids.device)


def stop_criteria(tokenizer: PreTrainedTokenizerBase, stop_str: str | None) -> StoppingCriteriaList:
    """The criterion that stops generation at `stop_str`: transformers' where it can be built, else text-based."""
    if not stop_str:
        return StoppingCriteriaList()
    try:
        return StoppingCriteriaList([StopStringCriteria(tokenizer, [stop_str])])
    except ValueError:  # a vocabulary StopStringCriteria cannot map to strings (word-level, WordPiece, ...)
        return StoppingCriteriaList([DecodedTextStop(tokenizer, stop_str)])


@torch.inference_mode()
def generate_answers(
    model: LlavaForCausalLM,
    tokenizer: PreTrainedTokenizerBase,
    prompts: Sequence[EncodedPrompt],
    config: GenerationConfig,
    streamer: TextStreamer | None = None,
) -> list[Generated]:
    """Answer a batch of prompts (left-padded); a streamer needs a batch of one.

    `config.stop_strings` (set by `generation_config`) is applied through `stop_criteria`, which works for
    every tokenizer, rather than by transformers' generate, which fails on some tokenizers' vocabularies.
    """
    if tokenizer.pad_token_id is None:
        raise ValueError("the tokenizer has no pad token; load the checkpoint with mvlm's load_pretrained_model")
    device = input_device(model)
    input_ids, attention_mask = left_padded_batch(prompts, tokenizer.pad_token_id, device)
    stop_str = config.stop_strings[0] if config.stop_strings else None
    run_config = copy.deepcopy(config)
    run_config.stop_strings = None
    output = model.generate(
        input_ids=input_ids,
        attention_mask=attention_mask,
        pixel_values=batch_pixel_values(prompts, device),
        generation_config=run_config,
        stopping_criteria=stop_criteria(tokenizer, stop_str),
        streamer=streamer,
    )
    rows = output.tolist()
    texts = tokenizer.batch_decode(rows, skip_special_tokens=True)
    return [Generated(row, cut_at_stop(text, stop_str)) for row, text in zip(rows, texts)]


class StopStringStreamer(TextStreamer):
    """TextStreamer that writes to `output` and never shows the stop string or anything after it.

    Text that might be the start of the stop string is held back until the next token settles it.
    """

    def __init__(self, tokenizer: PreTrainedTokenizerBase, stop_str: str | None, output: TextIO):
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop_str = stop_str
        self.output = output
        self.pending = ""
        self.stopped = False

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        if not self.stopped:
            self.pending += text
            shown, self.pending = self._split_pending(stream_end)
            self.output.write(shown)
        if stream_end:
            self.output.write("\n")
            self.pending, self.stopped = "", False
        self.output.flush()

    def _split_pending(self, stream_end: bool) -> tuple[str, str]:
        """(text safe to show now, text held back)."""
        stop = self.stop_str
        if not stop:
            return self.pending, ""
        if stop in self.pending:
            self.stopped = True
            return self.pending[: self.pending.index(stop)], ""
        if stream_end:
            return self.pending, ""
        for keep in range(min(len(stop) - 1, len(self.pending)), 0, -1):
            if stop.startswith(self.pending[-keep:]):
                return self.pending[:-keep], self.pending[-keep:]
        return self.pending, ""
