"""Phi-3 as a Llama: split the fused `qkv_proj` and `gate_up_proj` into Llama's separate projections.

Phi-3's decoder is Llama's with two matrices fused; consumers that only know Llama-shaped LLaVA
(the official LLaVA code, older tools) load the split form, as XTuner's `convert_phi_to_llama.py`
prepares it. Only what is exactly equal is converted: partial rotary embeddings or a scaled RoPE
are refused. Phi-3's sliding window has no Llama field: it is dropped with a warning, so prompts
longer than the window attend further than Phi-3 did (XTuner's converter drops it too).
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from transformers import LlamaConfig, PreTrainedConfig

from mvlm.errors import ExportError


def llama_config_from_phi3(config: PreTrainedConfig) -> LlamaConfig:
    """The Llama config with the same shapes, norms and rotary embedding as a Phi-3 config."""
    rope = dict(getattr(config, "rope_parameters", None) or {})
    if rope.get("partial_rotary_factor", getattr(config, "partial_rotary_factor", 1.0)) != 1.0:
        raise ExportError("this Phi-3 rotates only part of each head (partial_rotary_factor != 1), which Llama cannot")
    if rope.get("rope_type", "default") != "default":
        raise ExportError(f"this Phi-3 scales RoPE ({rope.get('rope_type')}), which a Llama config would not reproduce "
                         "exactly; export it without --as-llama")
    window = getattr(config, "sliding_window", None)
    if window is not None and window < config.max_position_embeddings:
        warnings.warn(f"Phi-3's sliding window ({window} tokens) has no Llama equivalent and is dropped: prompts "
                      f"longer than {window} tokens will attend further than they did", stacklevel=2)
    head_dim = config.hidden_size // config.num_attention_heads
    return LlamaConfig(
        vocab_size=config.vocab_size,
        hidden_size=config.hidden_size,
        intermediate_size=config.intermediate_size,
        num_hidden_layers=config.num_hidden_layers,
        num_attention_heads=config.num_attention_heads,
        num_key_value_heads=config.num_key_value_heads,
        head_dim=head_dim,
        hidden_act=config.hidden_act,
        max_position_embeddings=config.max_position_embeddings,
        rms_norm_eps=config.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": rope.get("rope_theta", 10000.0)},
        tie_word_embeddings=config.tie_word_embeddings,
        bos_token_id=config.bos_token_id,
        eos_token_id=config.eos_token_id,
        pad_token_id=config.pad_token_id,
        attention_bias=False,
        mlp_bias=False,
    )


def split_phi3_state_dict(state_dict: dict[str, torch.Tensor], config: PreTrainedConfig) -> dict[str, torch.Tensor]:
    """Phi-3 keys -> Llama keys: `qkv_proj` rows are q (heads x head_dim), then k and v (kv heads x head_dim)
    each; `gate_up_proj` rows are gate then up. The parts are copies: safetensors refuses views of one storage."""
    head_dim = config.hidden_size // config.num_attention_heads
    q_rows = config.num_attention_heads * head_dim
    kv_rows = config.num_key_value_heads * head_dim
    converted: dict[str, Any] = {}
    for key, tensor in state_dict.items():
        if key.endswith("self_attn.qkv_proj.weight"):
            q, k, v = (part.clone() for part in torch.split(tensor, [q_rows, kv_rows, kv_rows], dim=0))
            stem = key[: -len("qkv_proj.weight")]
            converted.update({stem + "q_proj.weight": q, stem + "k_proj.weight": k, stem + "v_proj.weight": v})
        elif key.endswith("mlp.gate_up_proj.weight"):
            gate, up = (part.clone() for part in torch.chunk(tensor, 2, dim=0))
            stem = key[: -len("gate_up_proj.weight")]
            converted.update({stem + "gate_proj.weight": gate, stem + "up_proj.weight": up})
        else:
            converted[key] = tensor
    return converted
