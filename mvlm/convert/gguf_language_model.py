"""The language model of an mvlm checkpoint as the plain HuggingFace causal LM that llama.cpp's
convert_hf_to_gguf.py reads: its own weights and config (so a head with a bias, Phi-2's, survives), and
the tokenizer with `<image>` and the chat template of the exported conversation mode.

Phi-3 is written as a Llama, its fused `qkv_proj` / `gate_up_proj` split (mvlm.convert.phi3_to_llama), as
XTuner's LLaVA-Phi-3 GGUF was made: llama.cpp's Phi-3 converter reads only SentencePiece's
`tokenizer.model`, which transformers 5 no longer saves, while its Llama converter reads tokenizer.json.
"""

from __future__ import annotations

import copy
import json
import os
import warnings
from typing import Any

from huggingface_hub import save_torch_state_dict

from mvlm.convert.phi3_to_llama import llama_config_from_phi3, split_phi3_state_dict
from mvlm.convert.to_hf import name_tokenizer_class_for_4x
from mvlm.errors import ExportError

BPE_PRE_TOKENIZERS = {("ByteLevel", False, True): "gpt-2"}
"""(type, add_prefix_space, use_regex) of a tokenizer.json pre-tokenizer -> llama.cpp's name for it.
GPT-2's byte-level BPE with its regex is llama.cpp's `gpt-2` pre-tokenizer (Phi-2's, CodeGen's)."""


def language_model_refusals(model: Any) -> list[str]:
    """Why the language model cannot go to llama.cpp as it is (empty when it can)."""
    language_model = model.language_model
    reasons = []
    if getattr(model, "hf_quantizer", None) is not None or getattr(language_model, "hf_quantizer", None) is not None:
        reasons.append("the model is quantized (bitsandbytes); load it without --load-4bit/8bit and choose "
                       "--outtype instead")
    config = language_model.config
    if config.model_type == "phi" and config.intermediate_size != 4 * config.hidden_size:
        reasons.append(f"llama.cpp's Phi-2 converter writes a feed-forward width of 4 x hidden_size "
                       f"({4 * config.hidden_size}), and this Phi's is {config.intermediate_size}")
    if config.model_type == "phi3":
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                llama_config_from_phi3(language_model.config)
        except ExportError as error:
            reasons.append(f"its Phi-3 is written as a Llama for llama.cpp, and {error}")
    return reasons


def write_language_model(model: Any, tokenizer: Any, folder: str, chat_template: str | None) -> None:
    """Save the causal LM (safetensors), its generation config, and the tokenizer with `chat_template`."""
    language_model = model.language_model
    if language_model.config.model_type == "phi3":
        _write_phi3_as_llama(language_model, folder)
    else:
        language_model.save_pretrained(folder, safe_serialization=True)
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.chat_template = chat_template
    tokenizer.save_pretrained(folder)
    name_tokenizer_class_for_4x(folder)  # llama.cpp's converters run with transformers 4.x
    prefix = space_prefix(tokenizer)
    if prefix is not None:
        path = os.path.join(folder, "tokenizer_config.json")
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
        config["add_prefix_space"] = prefix  # what convert_hf_to_gguf.py writes as tokenizer.ggml.add_space_prefix
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, ensure_ascii=False)


def _write_phi3_as_llama(language_model: Any, folder: str) -> None:
    config = llama_config_from_phi3(language_model.config)  # warns once where Phi-3's sliding window is dropped
    config.architectures = ["LlamaForCausalLM"]
    config.dtype = language_model.dtype
    state = split_phi3_state_dict(language_model.state_dict(), language_model.config)
    if config.tie_word_embeddings:
        state.pop("lm_head.weight", None)
    state = {key: value.detach().to("cpu").contiguous() for key, value in state.items()}
    os.makedirs(folder, exist_ok=True)
    save_torch_state_dict(state, folder, metadata={"format": "pt"})
    config.save_pretrained(folder)
    language_model.generation_config.save_pretrained(folder)


def space_prefix(tokenizer: Any) -> bool | None:
    """Whether llama.cpp's SentencePiece tokenizer must put "▁" before each text it tokenizes, as the
    HuggingFace tokenizer does (None: not a "▁" tokenizer, nothing to say).

    llama.cpp's `add_space_prefix` puts one at the start of every text and after every special token
    (`<image>`, `[INST]`): HuggingFace's legacy form (a normalizer prepending "▁", or Metaspace's "always").
    Metaspace's "first" (transformers 5's Llama tokenizers) marks only the very first word, and "never"
    none: llama.cpp must add none then. Chat prompts stay exact, since mvlm's chat template writes that
    first word's space itself (mvlm.convert.chat_template.leading_bos; llama.cpp drops the template's
    BOS text and adds its BOS token); a raw completion prompt loses its first word's "▁"."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    declared = json.loads(backend.to_str())
    for step in _steps(declared.get("pre_tokenizer")) + _steps(declared.get("normalizer")):
        if step.get("type") == "Metaspace":
            return step.get("prepend_scheme", "always") == "always"
        if step.get("type") == "Prepend" and step.get("prepend") == "▁":
            return True
    return None


def _steps(component: dict | None) -> list[dict]:
    """A tokenizer.json normalizer or pre-tokenizer as its list of steps (Sequences flattened)."""
    if not component:
        return []
    if component.get("type") == "Sequence":
        inner = component.get("pretokenizers") or component.get("normalizers") or []
        return [step for part in inner for step in _steps(part)]
    return [component]


def declared_bpe_pre_tokenizer(tokenizer: Any) -> str | None:
    """llama.cpp's name for the pre-tokenizer a byte-level BPE tokenizer.json declares, where it is one
    llama.cpp implements (None otherwise). llama.cpp itself recognises pre-tokenizers only by known
    vocabularies; this name is its fallback for a vocabulary it has not seen (gguf_convert_runner.py)."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    declared = json.loads(backend.to_str())
    pre = declared.get("pre_tokenizer") or {}
    if declared.get("model", {}).get("type") != "BPE" or declared.get("normalizer") is not None:
        return None
    return BPE_PRE_TOKENIZERS.get((pre.get("type"), pre.get("add_prefix_space"), pre.get("use_regex")))
