"""What every foreign format needs: reading configs and weight files, loading each part with its keys
renamed, merging PEFT adapters, and joining the parts into an mvlm model.

Parts are loaded with transformers' own `from_pretrained` (`key_mapping` renames the foreign keys), so
sharded safetensors, `.bin` files (read with `weights_only=True`), dtypes, device maps and quantization
work as for any checkpoint. A part whose weights are incomplete is refused, naming the folder and keys.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any, Callable

import torch
from peft import PeftConfig, get_peft_model, set_peft_model_state_dict
from safetensors import safe_open
from torch import nn
from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, PreTrainedConfig

from mvlm.errors import CheckpointError, CheckpointNotFoundError
from mvlm.model.builder import join_parts
from mvlm.model.projector_weights import assign_projector_weights

SAFETENSORS_INDEX = "model.safetensors.index.json"
BIN_INDEX = "pytorch_model.bin.index.json"


@dataclasses.dataclass
class ImportOptions:
    """What a foreign folder may not hold by itself, and how to load the weights."""

    model_base: str | None = None
    """The LLM, where the folder holds only adapters or a projector for it (XTuner LoRA or frozen-LLM runs)."""
    vision_tower: str | None = None
    """A tower checkpoint that replaces the one the folder names (e.g. a local copy, for offline use)."""
    load_kwargs: dict[str, Any] = dataclasses.field(default_factory=dict)
    """`dtype`, `device_map`, `quantization_config`, `attn_implementation` for `from_pretrained`."""


def read_config_dict(path: str) -> dict[str, Any] | None:
    """The folder's config.json as a dict, or None when it has none."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        return None
    with open(config_path, encoding="utf-8") as handle:
        try:
            return json.load(handle)
        except json.JSONDecodeError as error:
            raise CheckpointError(f"{config_path} is not valid JSON: {error}") from error


def weight_files(path: str) -> list[str]:
    """The weight files of a checkpoint folder: safetensors (sharded or not), else PyTorch .bin files."""
    for index_name, single in ((SAFETENSORS_INDEX, "model.safetensors"), (BIN_INDEX, "pytorch_model.bin")):
        index_path = os.path.join(path, index_name)
        if os.path.isfile(index_path):
            with open(index_path, encoding="utf-8") as handle:
                shards = sorted(set(json.load(handle)["weight_map"].values()))
            return [os.path.join(path, shard) for shard in shards]
        if os.path.isfile(os.path.join(path, single)):
            return [os.path.join(path, single)]
    raise CheckpointNotFoundError(f"{path} holds no weights (model.safetensors, pytorch_model.bin or their sharded indexes)")


def has_weights(path: str) -> bool:
    try:
        weight_files(path)
    except FileNotFoundError:
        return False
    return True


def tensor_names(path: str) -> list[str]:
    """Names of every tensor in the folder's weight files (safetensors headers only; .bin files are read)."""
    names: list[str] = []
    for file in weight_files(path):
        if file.endswith(".safetensors"):
            with safe_open(file, framework="pt") as handle:
                names += list(handle.keys())
        else:
            names += list(torch.load(file, map_location="cpu", weights_only=True, mmap=True))
    return names


def read_tensors(path: str, select: Callable[[str], bool]) -> dict[str, torch.Tensor]:
    """The tensors of a folder (or of one weight file) whose names `select` accepts."""
    files = [path] if os.path.isfile(path) else weight_files(path)
    tensors: dict[str, torch.Tensor] = {}
    for file in files:
        if file.endswith(".safetensors"):
            with safe_open(file, framework="pt") as handle:
                tensors.update({key: handle.get_tensor(key) for key in handle.keys() if select(key)})
        else:
            state = torch.load(file, map_location="cpu", weights_only=True)
            tensors.update({key: value for key, value in state.items() if select(key)})
    return tensors


def text_config_from(model_type: str, values: dict[str, Any], drop: set[str]) -> PreTrainedConfig:
    """The LLM's config from a foreign config dict that mixes it with multimodal fields (`drop`)."""
    kept = {key: value for key, value in values.items() if key not in drop and key not in ("model_type", "auto_map")}
    kept["architectures"] = None
    return AutoConfig.for_model(model_type, **kept)


def _part_kwargs(options: ImportOptions, quantize: bool) -> dict[str, Any]:
    kwargs = {key: value for key, value in options.load_kwargs.items() if value is not None}
    if not quantize:
        kwargs.pop("quantization_config", None)
    return kwargs


def _check_loading(info: dict[str, Any], what: str, source: str, ignore: Callable[[str], bool] = lambda _key: False) -> None:
    missing = sorted(key for key in info.get("missing_keys", ()) if not ignore(key))
    mismatched = sorted(str(item) for item in info.get("mismatched_keys", ()))
    if missing or mismatched:
        raise CheckpointError(
            f"{source}: the {what} weights are incomplete or mis-shaped (missing {missing[:5]}, mismatched "
            f"{mismatched[:3]}); the folder is damaged or its config does not describe its weights"
        )


def load_language_model(
    source: str, text_config: PreTrainedConfig, options: ImportOptions, key_mapping: dict[str, str] | None = None
) -> nn.Module:
    """The causal LM from `source`'s weight files, keys renamed by `key_mapping`; other parts' keys are ignored."""
    model, info = AutoModelForCausalLM.from_pretrained(
        source, config=text_config, key_mapping=key_mapping, output_loading_info=True, **_part_kwargs(options, True)
    )
    tied = getattr(text_config, "tie_word_embeddings", False)
    _check_loading(info, "language model", source, ignore=lambda key: tied and key.startswith("lm_head."))
    return model


def load_tower(
    source: str, vision_config: PreTrainedConfig, options: ImportOptions, key_mapping: dict[str, str] | None = None
) -> nn.Module:
    """The vision tower from `source`'s weight files, keys renamed by `key_mapping`."""
    model, info = AutoModel.from_pretrained(
        source, config=vision_config, key_mapping=key_mapping, output_loading_info=True, **_part_kwargs(options, False)
    )
    _check_loading(info, "vision tower", source)
    return model


def merge_adapter(module: nn.Module, folder: str) -> nn.Module:
    """Merge the PEFT LoRA adapter saved in `folder` into `module` and return the plain module.

    Adapter keys name modules as the training run's transformers did; 5.x dropped CLIP's and SigLIP's
    `vision_model.` level, so a key that only matches without it is read that way.
    """
    config = PeftConfig.from_pretrained(folder)
    config.inference_mode = True
    wrapped = get_peft_model(module, config)
    adapter_file = next(
        (os.path.join(folder, name) for name in ("adapter_model.safetensors", "adapter_model.bin")
         if os.path.isfile(os.path.join(folder, name))), None)
    if adapter_file is None:
        raise CheckpointNotFoundError(f"{folder} has adapter_config.json but no adapter_model.safetensors or .bin")
    tensors = read_tensors(adapter_file, lambda _key: True)
    own = {name.replace(".default", "") for name in wrapped.state_dict()}
    aligned = {}
    for key, value in tensors.items():
        if key not in own and key.replace("vision_model.", "", 1) in own:
            key = key.replace("vision_model.", "", 1)
        aligned[key] = value
    unknown = sorted(key for key in aligned if key not in own)
    if unknown:
        raise CheckpointError(f"{adapter_file} holds adapters for modules this model lacks, e.g. {unknown[:3]}")
    result = set_peft_model_state_dict(wrapped, aligned)
    missing = [key for key in result.missing_keys if "lora_" in key]
    if missing:
        raise CheckpointError(f"{adapter_file} lacks adapter weights its adapter_config.json asks for, e.g. {missing[:3]}")
    return wrapped.merge_and_unload()


def assemble(
    tower: nn.Module,
    language_model: nn.Module,
    tokenizer: Any,
    image_processor: Any,
    projector_type: str,
    projector_weights: dict[str, torch.Tensor],
    source: str,
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str | None = None,
    image_aspect_ratio: str = "pad",
    conv_mode: str | None = None,
    mm_vision_tower: str | None = None,
) -> tuple[Any, Any, Any]:
    """Join loaded parts into an mvlm model; `<image>` (and a pad token) join the tokenizer if missing.

    `projector_weights` are keyed by the projector's own names (`linear_1.weight`, ...).
    """
    model = join_parts(
        tower,
        language_model,
        tokenizer,
        projector_type=projector_type,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        image_aspect_ratio=image_aspect_ratio,
        conv_mode=conv_mode,
        mm_vision_tower=mm_vision_tower,
    )
    embeddings = model.get_input_embeddings().weight
    model.multi_modal_projector.to(device=embeddings.device, dtype=next(tower.parameters()).dtype)
    assign_projector_weights(model, projector_weights, source)
    return model, tokenizer, image_processor
