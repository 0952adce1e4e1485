"""Attention for padding-free packed batches: one flattened row holding a whole micro-batch, with the samples'
boundaries passed as transformers' `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` passes them
(`cu_seq_lens_q/k`, int32 cumulative lengths from 0, and `max_length_q/k`).

transformers' flash-attention 2 reads these boundaries natively. For everywhere else two functions are
registered with transformers' `AttentionInterface`, so every HuggingFace causal LM dispatches to them by name,
with no per-model code:
- `mvlm_varlen`: PyTorch's own variable-length flash kernel (`torch.nn.attention.varlen`, PyTorch >= 2.10,
  CUDA, half precision);
- `mvlm_per_sample`: the row split at the boundaries and causal SDPA run on each sample, on any device. A
  block-diagonal mask over the whole row would do the same sums but spend most of its work on masked-out
  pairs (it measured slower than padding).

A packed batch can never meet a kernel that ignores its boundaries: both functions refuse a packed batch of
several rows, boundaries for only one side, or restarting `position_ids` without boundaries. Batches without
boundaries (padded evaluation, generation) get ordinary causal SDPA with their attention mask, so a model
left on these functions after training still works everywhere. The names are never saved: transformers
does not write a config's attention implementation to config.json.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from transformers import AttentionInterface, PreTrainedConfig
from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

from mvlm.errors import FlagError

try:
    from torch.nn.attention.varlen import varlen_attn
except ImportError:  # PyTorch < 2.10
    varlen_attn = None

logger = logging.getLogger(__name__)

VARLEN = "mvlm_varlen"
PER_SAMPLE = "mvlm_per_sample"  # no "sdpa" in the name: transformers then checks the model's SDPA support
PACKED_ATTENTIONS = (VARLEN, PER_SAMPLE)
BOUNDARY_KEYS = ("cu_seq_lens_q", "cu_seq_lens_k", "max_length_q", "max_length_k")


def per_sample_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """Causal SDPA on each sample of a packed row; query/key/value are (1, heads, tokens, head_dim).

    Returns transformers' layout, (batch, tokens, heads, head_dim), and no attention weights.
    """
    return _dispatch(_per_sample, module, query, key, value, attention_mask, **kwargs)


def varlen_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A packed row through PyTorch's variable-length flash kernel (CUDA), as `per_sample_attention` computes it.

    The kernel has neither logit soft-capping nor dropout: a model that needs them is refused, not approximated.
    """
    return _dispatch(_varlen, module, query, key, value, attention_mask, **kwargs)


def _dispatch(
    packed: Callable[..., torch.Tensor], module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None = None, dropout: float = 0.0,
    sliding_window: int | None = None, softcap: float | None = None, **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """A packed row to `packed`; any other batch to causal SDPA with its attention mask, one sequence per row."""
    options = (scaling, dropout, sliding_window, softcap)
    if not _is_packed(query, attention_mask, kwargs):
        return _unpacked_attention(module, query, key, value, attention_mask, *options, kwargs), None
    return packed(module, query, key, value, *options, kwargs), None


def _per_sample(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None,
    dropout: float, sliding_window: int | None, softcap: float | None, kwargs: dict[str, Any],
) -> torch.Tensor:
    query_lengths = _sample_lengths(kwargs["cu_seq_lens_q"], query.shape[2], "cu_seq_lens_q")
    key_lengths = _sample_lengths(kwargs["cu_seq_lens_k"], key.shape[2], "cu_seq_lens_k")
    outputs = [
        _attention(module, sample_query, sample_key, sample_value, None, scaling, dropout, sliding_window, softcap)
        for sample_query, sample_key, sample_value in zip(
            query.split(query_lengths, dim=2), key.split(key_lengths, dim=2), value.split(key_lengths, dim=2)
        )
    ]
    return torch.cat(outputs, dim=2).transpose(1, 2).contiguous()


def _varlen(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, scaling: float | None,
    dropout: float, sliding_window: int | None, softcap: float | None, kwargs: dict[str, Any],
) -> torch.Tensor:
    if softcap is not None:
        raise FlagError(f"{VARLEN} has no logit soft-capping (this model's attn_logit_softcapping={softcap}); "
                         f"train it with --attn_implementation {PER_SAMPLE} or flash_attention_2")
    if dropout:
        raise FlagError(f"{VARLEN} has no attention dropout (this model's attention_dropout={dropout}); "
                         f"set it to 0 or train with --attn_implementation {PER_SAMPLE}")
    if varlen_attn is None:
        raise ImportError(f"{VARLEN} needs PyTorch >= 2.10 (torch.nn.attention.varlen)")
    causal = getattr(module, "is_causal", True)
    # transformers' window holds `sliding_window` keys, the query's own included; the kernel counts the others.
    left = sliding_window - 1 if sliding_window is not None else -1
    window = (left, 0) if causal else (left, left)
    tokens_query, tokens_key, tokens_value = (  # (tokens, heads, head_dim)
        tensor.transpose(1, 2).reshape(-1, tensor.shape[1], tensor.shape[3]) for tensor in (query, key, value)
    )
    cu_seq_lens_q, cu_seq_lens_k = (kwargs[name].to(query.device, torch.int32) for name in BOUNDARY_KEYS[:2])
    output = varlen_attn(
        tokens_query, tokens_key, tokens_value, cu_seq_lens_q, cu_seq_lens_k,
        _max_length(kwargs.get("max_length_q"), cu_seq_lens_q), _max_length(kwargs.get("max_length_k"), cu_seq_lens_k),
        scale=scaling, window_size=window, enable_gqa=query.shape[1] != key.shape[1],
    )
    return output.unsqueeze(0)


def padding_mask(*, attention_mask: torch.Tensor | None = None, use_vmap: bool = False, **kwargs: Any):
    """The mask transformers builds for the packed functions: SDPA's for padded batches, none for packed rows.

    A packed row's boundaries travel to the attention function, so the (tokens x tokens) block mask
    transformers would derive from its position_ids is never built. Models that add their own mask terms
    (`use_vmap`, e.g. chunked attention) keep them; the packed functions then refuse a packed row.
    """
    if attention_mask is None and not use_vmap:
        return None
    return sdpa_mask(attention_mask=attention_mask, use_vmap=use_vmap, **kwargs)


for _name, _function in ((VARLEN, varlen_attention), (PER_SAMPLE, per_sample_attention)):
    AttentionInterface.register(_name, _function)
    AttentionMaskInterface.register(_name, padding_mask)


def varlen_unusable_reason(text_config: PreTrainedConfig, dtype: torch.dtype, device: torch.device) -> str | None:
    """Why `mvlm_varlen` cannot train this language model here, or None when it can."""
    if varlen_attn is None:
        return "it needs PyTorch >= 2.10 (torch.nn.attention.varlen)"
    if device.type != "cuda":
        return "it runs on CUDA GPUs only"
    if dtype not in (torch.float16, torch.bfloat16):
        return f"it needs bf16 or fp16 weights (--bf16 True), not {dtype}"
    if getattr(text_config, "attn_logit_softcapping", None) is not None:
        return "it has no logit soft-capping (attn_logit_softcapping)"
    if getattr(text_config, "attention_dropout", 0.0):
        return "it has no attention dropout (attention_dropout)"
    return _varlen_kernel_failure(device, dtype)


@functools.lru_cache(maxsize=None)
def _varlen_kernel_failure(device: torch.device, dtype: torch.dtype) -> str | None:
    """One tiny call, so a GPU the kernel does not support is found at setup, not in the first step."""
    probe = torch.zeros(2, 1, 8, device=device, dtype=dtype)
    boundaries = torch.tensor([0, 2], device=device, dtype=torch.int32)
    try:
        varlen_attn(probe, probe, probe, boundaries, boundaries, 2, 2, window_size=(-1, 0))
    except RuntimeError as error:
        return f"its kernel fails on this GPU: {str(error).splitlines()[0]}"
    return None


def choose_packed_attention(
    loaded: str, requested: str | None, text_config: PreTrainedConfig, dtype: torch.dtype, device: torch.device
) -> str:
    """The attention a packed batch trains with: flash-attention where the model was loaded with it, else the one
    asked for by name, else `mvlm_varlen` where it can run, else `mvlm_per_sample`."""
    if loaded.startswith("flash_attention"):
        return loaded
    reason = varlen_unusable_reason(text_config, dtype, device)
    if requested == VARLEN and reason is not None:
        raise FlagError(f"--attn_implementation {VARLEN} cannot train this model here: {reason}; "
                         f"use {PER_SAMPLE} (any device) or flash_attention_2")
    if requested in PACKED_ATTENTIONS:
        return requested
    chosen = VARLEN if reason is None else PER_SAMPLE
    logger.info("--packing: the language model attends with %s%s", chosen,
                "" if reason is None else f" (SDPA per sample; {VARLEN} is not used: {reason})")
    return chosen


def use_packed_attention(model: nn.Module, requested: str | None = None, device: torch.device | None = None) -> str:
    """Switch an mvlm model's language model to the attention packed batches need (the tower keeps its own).

    `requested`: a name from PACKED_ATTENTIONS, or None for the best available; `device`: where it will train
    (default: where it is). Returns the name.
    """
    text_config = model.config.text_config
    device = device if device is not None else model.get_input_embeddings().weight.device
    attention = choose_packed_attention(text_config._attn_implementation, requested, text_config,
                                        model.language_model.dtype, torch.device(device))
    model.language_model.set_attn_implementation(attention)
    return attention


def _is_packed(query: torch.Tensor, attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> bool:
    """Whether the batch is one packed row with boundaries; raises where it is packed but not safely so."""
    given = [name for name in BOUNDARY_KEYS[:2] if kwargs.get(name) is not None]
    if not given:
        return False
    if len(given) == 1:
        raise ValueError(f"a packed batch needs both cu_seq_lens_q and cu_seq_lens_k; only {given[0]} was given")
    if query.shape[0] != 1:
        raise ValueError(f"a packed batch must be one flattened row (boundaries in cu_seq_lens_q/k), got "
                         f"{query.shape[0]} rows; SupervisedCollator(packing=True) builds such batches")
    if attention_mask is not None:
        raise ValueError("a packed batch takes its boundaries from cu_seq_lens_q/k and no attention_mask; this "
                         "model builds a mask of its own, which the packed attention functions cannot follow")
    return True


def _unpacked_attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
    attention_mask: torch.Tensor | None, scaling: float | None, dropout: float, sliding_window: int | None,
    softcap: float | None, kwargs: dict[str, Any],
) -> torch.Tensor:
    """A batch without boundaries: each row is one sequence (a padded batch's mask says where it ends)."""
    position_ids = kwargs.get("position_ids")
    if attention_mask is None and position_ids is not None and position_ids.shape[-1] > 1:
        if bool((position_ids.diff(dim=-1) != 1).any()):
            raise ValueError("position_ids restart inside a row, but no cu_seq_lens_q/k say where its samples "
                             "end: samples would attend to each other; pack with SupervisedCollator(packing=True)")
    return _attention(module, query, key, value, attention_mask, scaling, dropout, sliding_window,
                      softcap).transpose(1, 2).contiguous()


def _attention(
    module: nn.Module, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor, mask: torch.Tensor | None,
    scaling: float | None, dropout: float, sliding_window: int | None, softcap: float | None,
) -> torch.Tensor:
    """Attention of each row of (batch, heads, tokens, head_dim) tensors with itself, (batch, heads, tokens, head_dim).

    Without `mask`: causal (aligned at the end where a cache makes keys longer than queries), within
    `sliding_window` keys. Keys may have fewer heads than queries (grouped-query attention).
    """
    query_length, key_length = query.shape[2], key.shape[2]
    causal = getattr(module, "is_causal", True)
    windowed = sliding_window is not None and key_length > sliding_window
    grouped = query.shape[1] != key.shape[1]
    if mask is None and softcap is None and not windowed and (query_length == key_length or not causal):
        return F.scaled_dot_product_attention(query, key, value, dropout_p=dropout, scale=scaling,
                                              is_causal=causal and query_length > 1, enable_gqa=grouped)
    if mask is None:
        mask = _causal_mask(query_length, key_length, sliding_window if windowed else None, causal, query.device)
    if softcap is None:
        return F.scaled_dot_product_attention(query, key, value, attn_mask=mask, dropout_p=dropout, scale=scaling,
                                              enable_gqa=grouped)
    # SDPA has no soft-capping (Gemma 2): the steps of transformers' eager attention.
    groups = query.shape[1] // key.shape[1]
    key, value = key.repeat_interleave(groups, dim=1), value.repeat_interleave(groups, dim=1)
    scores = torch.matmul(query, key.transpose(2, 3)) * (scaling if scaling is not None else query.shape[-1] ** -0.5)
    scores = torch.tanh(scores / softcap) * softcap
    if mask.dtype == torch.bool:
        scores = scores.masked_fill(~mask, torch.finfo(scores.dtype).min)
    else:
        scores = scores + mask
    weights = torch.softmax(scores, dim=-1, dtype=torch.float32).to(query.dtype)
    weights = F.dropout(weights, p=dropout, training=module.training)
    return torch.matmul(weights, value)


def _causal_mask(
    query_length: int, key_length: int, sliding_window: int | None, causal: bool, device: torch.device
) -> torch.Tensor:
    """(queries, keys) booleans, True where a query may attend; queries are the last `query_length` positions."""
    query_positions = torch.arange(key_length - query_length, key_length, device=device)[:, None]
    key_positions = torch.arange(key_length, device=device)[None, :]
    allowed = torch.ones(query_length, key_length, dtype=torch.bool, device=device)
    if causal:
        allowed &= key_positions <= query_positions
    if sliding_window is not None:
        allowed &= (query_positions - key_positions).abs() < sliding_window
    return allowed


def _sample_lengths(cu_seq_lens: torch.Tensor, tokens: int, name: str) -> list[int]:
    lengths = cu_seq_lens.diff().tolist()
    if int(cu_seq_lens[0]) != 0 or sum(lengths) != tokens:
        raise ValueError(f"{name} must run from 0 to the row's {tokens} tokens, got {cu_seq_lens.tolist()}")
    return lengths


def _max_length(given: int | torch.Tensor | None, cu_seq_lens: torch.Tensor) -> int:
    return int(given) if given is not None else int(cu_seq_lens.diff().max())
