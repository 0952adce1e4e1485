"""Batched generation: left-padded prompts in, one answer per row out, equal to one-at-a-time answers."""

from __future__ import annotations

import copy
from typing import NamedTuple, Sequence

import torch
from transformers import GenerationConfig, PreTrainedTokenizerBase, TextStreamer

from mvlm.errors import FlagError
from mvlm.inference.devices import input_device
from mvlm.inference.prompts import EncodedPrompt
from mvlm.inference.stopping import cut_at_stop, stop_criteria
from mvlm.model.modeling import LlavaForCausalLM


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
        raise FlagError(f"--temperature must be >= 0 (0 is greedy), got {temperature}")
    if num_beams < 1 or max_new_tokens < 1:
        raise FlagError(f"--num_beams and --max_new_tokens must be >= 1, got {num_beams} and {max_new_tokens}")
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
