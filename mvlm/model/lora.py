"""LoRA adapters on the language model and/or the vision tower, and the LoRA checkpoint format.

A LoRA checkpoint folder holds PEFT's `adapter_config.json` + `adapter_model.safetensors`, the weights
that trained fully next to the adapters (the projector, an unfrozen tower) in
`non_lora_trainables.safetensors` (LLaVA's file of the same role, as safetensors), and the mvlm config,
tokenizer and image processor. It is loaded over the model it was trained from (`--model-base`).

Adapters target every linear layer of the chosen parts (LLaVA's "all linear" choice) except the LM's
output head, found by walking the model rather than from a per-architecture list, so any causal LM works.
"""

from __future__ import annotations

import os
import re
from typing import Any

import torch
from peft import LoraConfig, PeftModel, get_peft_model, set_peft_model_state_dict
from safetensors.torch import load_file, save_file
from torch import nn

from mvlm.errors import CheckpointError, FlagError

NON_LORA_FILE = "non_lora_trainables.safetensors"
ADAPTER_FILE = "adapter_model.safetensors"
_PEFT_PREFIX = "base_model.model."


def lora_target_pattern(model: nn.Module, parts: list[str]) -> str:
    """A regex (PEFT full-matches it against module names) for the linear layers of `parts`, head excluded."""
    head = model.get_output_embeddings()
    alternatives = []
    for part in parts:
        leaf_names = sorted({
            name.rsplit(".", 1)[-1]
            for name, module in getattr(model, part).named_modules()
            if isinstance(module, nn.Linear) and module is not head
        })
        if not leaf_names:
            raise FlagError(f"LoRA asked for on {part}, but it has no linear layers")
        alternatives.append(rf"{part}\..*\.({'|'.join(map(re.escape, leaf_names))})")
    return "|".join(f"(?:{alternative})" for alternative in alternatives)


def add_lora(
    model: nn.Module, parts: list[str], r: int, alpha: int, dropout: float, bias: str = "none"
) -> PeftModel:
    """Wrap `model` in PEFT with adapters on the linear layers of `parts` (e.g. ['language_model']).

    Adapters take the dtype of the layer they sit on (bf16 in a bf16 run, fp32 over 4-bit weights):
    PEFT's default upcast to fp32 would mix dtypes among trainable parameters, which ZeRO-3 refuses.
    """
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, bias=bias, target_modules=lora_target_pattern(model, parts)
    )
    return get_peft_model(model, config, autocast_adapter_dtype=False)


def base_name(name: str) -> str:
    """A parameter name of the wrapped model as the bare model names it."""
    return name[len(_PEFT_PREFIX):] if name.startswith(_PEFT_PREFIX) else name


def non_lora_trainable_names(model: nn.Module) -> list[str]:
    """Names (in the wrapped model) of parameters that train fully next to the adapters."""
    return [name for name, parameter in model.named_parameters() if parameter.requires_grad and "lora_" not in name]


def save_lora(model: PeftModel, output_dir: str, state_dict: dict[str, torch.Tensor] | None = None) -> None:
    """Write the adapters and the non-LoRA trainables; `state_dict` is the gathered one under ZeRO-3."""
    state_dict = state_dict if state_dict is not None else model.state_dict()
    model.save_pretrained(output_dir, state_dict=state_dict, save_embedding_layers=False)
    trainables = {
        base_name(name): state_dict[name].detach().to("cpu").contiguous() for name in non_lora_trainable_names(model)
    }
    if trainables:
        save_file(trainables, os.path.join(output_dir, NON_LORA_FILE), metadata={"format": "pt"})


def load_non_lora_trainables(model: nn.Module, folder: str) -> None:
    """Load `non_lora_trainables.safetensors` (if the folder has one) into the bare or wrapped model."""
    path = os.path.join(folder, NON_LORA_FILE)
    if not os.path.isfile(path):
        return
    bare = model.get_base_model() if isinstance(model, PeftModel) else model
    own = bare.state_dict()
    tensors = load_file(path)
    unknown = sorted(set(tensors) - set(own))
    if unknown:
        raise CheckpointError(f"{path} holds tensors this model does not have: {unknown[:5]}; was it trained from "
                         "another base model?")
    for key, tensor in tensors.items():
        if tensor.shape != own[key].shape:
            raise CheckpointError(f"{path}: {key} has shape {tuple(tensor.shape)}, the model needs {tuple(own[key].shape)}")
    bare.load_state_dict({key: value.to(own[key].dtype) for key, value in tensors.items()}, strict=False)


def resume_lora(model: PeftModel, folder: str) -> None:
    """Put a LoRA checkpoint's adapters and non-LoRA trainables back into the model being trained."""
    adapters = load_file(os.path.join(folder, ADAPTER_FILE))
    result = set_peft_model_state_dict(model, adapters)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing:
        raise CheckpointError(f"{folder}/{ADAPTER_FILE} lacks adapter weights this run has, e.g. {missing[:3]}; it "
                         "was written with other --lora_* or --lora_vision_tower settings")
    load_non_lora_trainables(model, folder)


def apply_lora_checkpoint(model: nn.Module, folder: str, merge: bool = True) -> Any:
    """Load a LoRA checkpoint over its base model; merged into plain weights unless `merge` is False."""
    load_non_lora_trainables(model, folder)
    wrapped = PeftModel.from_pretrained(model, folder)
    return wrapped.merge_and_unload() if merge else wrapped
