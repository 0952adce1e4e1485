"""The training forward of a wrapped causal LM with the fused loss: its decoder, then its own head's weights.

The causal LM stays whole (mvlm never copies an LLM's modeling code): its decoder (`get_decoder()`) gives
the last hidden states, and its output embeddings (`get_output_embeddings()`: a tied head is the input
embedding, Phi-2's has a bias) and `final_logit_softcapping` (Gemma-2) go into
`mvlm.model.fused_loss.causal_lm_loss`. Whether that reproduces the LM's own logits is checked once per
model, on the first batch's first tokens; an LM where it does not (a logit scale, a head that is no plain
linear layer, no separate decoder) trains with its own full loss, and the reason is logged once.
"""

from __future__ import annotations

import functools
import logging
import weakref
from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from mvlm.model.fused_loss import causal_lm_loss, head_logits
from mvlm.model.zero3 import readable

logger = logging.getLogger(__name__)

PROBE_TOKENS = 8
_checked: weakref.WeakKeyDictionary[nn.Module, str | None] = weakref.WeakKeyDictionary()


def fused_loss_forward(
    language_model: nn.Module, inputs_embeds: torch.Tensor, labels: torch.Tensor, **kwargs: Any
) -> CausalLMOutputWithPast | None:
    """The LM's loss from its decoder's hidden states, with no logits; None where that would not be the LM's own
    loss (the reason is logged once; the caller then runs the LM's own forward).

    `kwargs` are what the LM's forward would get (attention_mask, position_ids, use_cache, ...), plus Trainer's
    `num_items_in_batch` and an optional `shift_labels`, which only the loss reads.
    """
    reason = _unsupported_reason(language_model, inputs_embeds)
    if reason is not None:
        _log_once(f"fused loss off for this {type(language_model).__name__}: {reason}; training with its full "
                  "logits")
        return None
    num_items_in_batch = kwargs.pop("num_items_in_batch", None)
    shift_labels = kwargs.pop("shift_labels", None)
    outputs = language_model.get_decoder()(inputs_embeds=inputs_embeds, **kwargs)
    head = language_model.get_output_embeddings()
    loss = causal_lm_loss(outputs.last_hidden_state, labels, head.weight, head.bias, _softcap(language_model),
                          num_items_in_batch=num_items_in_batch, shift_labels=shift_labels)
    rest = {key: value for key, value in outputs.items() if key != "last_hidden_state"}  # cache, hidden states
    return CausalLMOutputWithPast(loss=loss, logits=None, **rest)


def _softcap(language_model: nn.Module) -> float | None:
    return getattr(language_model.config, "final_logit_softcapping", None)


def _unsupported_reason(language_model: nn.Module, inputs_embeds: torch.Tensor) -> str | None:
    """Why the fused loss would not be this LM's own loss, or None; found once per model."""
    if language_model not in _checked:
        _checked[language_model] = _structure_problem(language_model) or _probe(language_model, inputs_embeds)
    return _checked[language_model]


def _structure_problem(language_model: nn.Module) -> str | None:
    get_decoder = getattr(language_model, "get_decoder", None)
    decoder = get_decoder() if get_decoder is not None else None
    if decoder is None or decoder is language_model:
        return "it has no separate decoder module (get_decoder()) to take the last hidden states from"
    head = language_model.get_output_embeddings()
    if not isinstance(head, nn.Linear):
        return f"its output head is a {type(head).__name__}, not a plain linear layer"
    return None


@torch.no_grad()
def _probe(language_model: nn.Module, inputs_embeds: torch.Tensor) -> str | None:
    """Compare the LM's own logits with its head applied to its decoder's output on a few real tokens.

    Catches what the LM's forward does between the two that mvlm does not (Cohere's logit scale,
    Granite's divisor, ...). Both runs stay in the current mode (eval mode changes some models: bitsandbytes
    repacks 4-bit weights for the CPU) and draw the same dropout from one seed; the RNG is restored after.
    """
    sample = inputs_embeds[:1, :PROBE_TOKENS].detach()
    devices = [] if sample.device.type == "cpu" else [sample.device]
    with torch.random.fork_rng(devices=devices, device_type=sample.device.type if devices else "cuda"):
        torch.manual_seed(0)
        expected = language_model(inputs_embeds=sample, use_cache=False).logits.float()
        torch.manual_seed(0)
        hidden = language_model.get_decoder()(inputs_embeds=sample, use_cache=False).last_hidden_state
    head = language_model.get_output_embeddings()
    with readable([param for param in (head.weight, head.bias) if param is not None]):
        actual = head_logits(hidden, head.weight, head.bias, _softcap(language_model))
    if actual.shape != expected.shape:
        return f"its logits have shape {tuple(expected.shape)}, its head gives {tuple(actual.shape)}"
    tolerance = 1e-2 * expected.abs().max().item() + 1e-4  # bf16 rounding passes, a logit scale does not
    difference = (actual - expected).abs().max().item()
    if difference > tolerance:
        return (f"its logits differ from its head applied to its decoder's last hidden state (by up to "
                f"{difference:.3g}): its forward does more than head + final_logit_softcapping")
    return None


@functools.lru_cache(maxsize=None)
def _log_once(message: str) -> None:
    logger.warning(message)
