"""The one loader: any model folder a user has, as one `LoadedModel`.

mvlm's own checkpoints (full, a LoRA folder or a stage-1 projector folder over a base), and the formats
users come from (HuggingFace LLaVA, official LLaVA, Mipha / LLaVA-Phi, XTuner), decided by the folder's
files. Training, the data check, chat, the benchmark runners and the converters all load through here,
so a model is read one way everywhere. `load_pretrained_model` keeps LLaVA's signature and 4-tuple.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import torch
from safetensors import SafetensorError
from transformers import BitsAndBytesConfig, PreTrainedTokenizerBase

from mvlm.data.processors import load_processors
from mvlm.errors import CheckpointError, FlagError
from mvlm.loading.formats import ImportOptions, detect_format, load_foreign
from mvlm.loading.kinds import checkpoint_kind, is_full_checkpoint
from mvlm.model.builder import build_model, quantization_config
from mvlm.model.configuration import MvlmLlavaConfig
from mvlm.model.lora import apply_lora_checkpoint
from mvlm.model.modeling import LlavaForCausalLM
from mvlm.model.projector_weights import load_projector_weights

DEFAULT_CONTEXT_LENGTH = 2048
# What a checkpoint's files raise when they are damaged or incomplete (as opposed to mvlm's own bugs).
UNREADABLE_FILE_ERRORS = (OSError, json.JSONDecodeError, SafetensorError)


@dataclasses.dataclass
class LoadedModel:
    """Everything a front end needs from a model folder, by name rather than by tuple position."""

    model: LlavaForCausalLM
    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    conv_mode: str | None
    """The chat template the checkpoint was trained with (its config's `conv_mode`); None if it names none."""
    context_length: int
    """The LLM's `max_position_embeddings` (LLaVA's `context_len`)."""


def load_model(
    model_path: str,
    model_base: str | None = None,
    *,
    device: str | None = "cpu",
    device_map: str | dict | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    quantization: BitsAndBytesConfig | None = None,
    torch_dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    vision_tower: str | None = None,
) -> LoadedModel:
    """Load any model folder in eval mode, on `device` (or spread by `device_map`).

    `model_base` is the model a LoRA or projector folder was trained from; `vision_tower` replaces the
    tower a foreign folder names (e.g. for offline use). The default dtype is float16 on CUDA (as LLaVA)
    and float32 elsewhere. `quantization` (training's QLoRA settings) replaces LLaVA's `load_8bit` /
    `load_4bit`; `device=None` leaves the model where loading put it (training: the Trainer places it).
    A folder that cannot be read is a CheckpointError naming it and the cause.
    """
    if load_8bit and load_4bit:
        raise FlagError("choose one of load_8bit and load_4bit")
    dtype = torch_dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    if quantization is None:
        quantization = quantization_config(8 if load_8bit else 4 if load_4bit else 16, dtype)
    if quantization is not None and device_map is None and device is not None:
        device_map = {"": device}
    load_kwargs = _from_pretrained_kwargs(dtype, quantization, device_map, attn_implementation)
    try:
        model, tokenizer, image_processor = _read_folder(model_path, model_base, vision_tower, load_kwargs)
    except CheckpointError as error:  # already says what is wrong; add which checkpoint (type kept for callers)
        error.args = (f"cannot load the checkpoint {model_path}: {error}",)
        raise
    except UNREADABLE_FILE_ERRORS as error:
        raise CheckpointError(f"cannot load the checkpoint {model_path}: {error}") from error
    if device_map is None and device is not None:
        model.to(device)
    model.eval()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        image_processor=image_processor,
        conv_mode=getattr(model.config, "conv_mode", None),
        context_length=getattr(model.config.text_config, "max_position_embeddings", None) or DEFAULT_CONTEXT_LENGTH,
    )


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = None,
    device: str = "cpu",
    torch_dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    vision_tower: str | None = None,
) -> tuple[PreTrainedTokenizerBase, LlavaForCausalLM, Any, int]:
    """LLaVA's loader, for LLaVA's scripts: (tokenizer, model, image_processor, context_len).

    `model_name` is accepted and ignored: the folder's files decide what it is. New code uses `load_model`.
    """
    del model_name
    loaded = load_model(model_path, model_base, device=device, device_map=device_map, load_8bit=load_8bit,
                        load_4bit=load_4bit, torch_dtype=torch_dtype, attn_implementation=attn_implementation,
                        vision_tower=vision_tower)
    return loaded.tokenizer, loaded.model, loaded.image_processor, loaded.context_length


def _read_folder(
    model_path: str, model_base: str | None, vision_tower: str | None, load_kwargs: dict[str, Any]
) -> tuple[LlavaForCausalLM, PreTrainedTokenizerBase, Any]:
    foreign_format = detect_format(model_path) if os.path.isdir(model_path) else None
    if foreign_format:
        return load_foreign(model_path, foreign_format, ImportOptions(model_base, vision_tower, load_kwargs))
    kind = checkpoint_kind(model_path)
    if kind == "full":
        model = LlavaForCausalLM.from_pretrained(model_path, **load_kwargs)
    else:
        model = _load_base_for(model_path, kind, model_base, load_kwargs)
        if kind == "projector":
            load_projector_weights(model, model_path)
        else:
            # Merging adapters into quantized weights would round them; those stay as adapters.
            model = apply_lora_checkpoint(model, model_path, merge=load_kwargs["quantization_config"] is None)
    tokenizer, image_processor = load_processors(model_path)
    return model, tokenizer, image_processor


def _from_pretrained_kwargs(
    dtype: torch.dtype,
    quantization: BitsAndBytesConfig | None,
    device_map: str | dict | None,
    attn_implementation: str | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype, "quantization_config": quantization, "device_map": device_map}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _load_base_for(model_path: str, kind: str, model_base: str | None, load_kwargs: dict[str, Any]) -> LlavaForCausalLM:
    """The model a projector or LoRA folder was trained from: an mvlm checkpoint given as `model_base`,
    or a fresh build from the LLM `model_base` and the tower the folder's config names. Either way the
    folder's inference settings (template, aspect ratio) replace the base's."""
    if model_base is None:
        what = "only a projector (a stage-1 checkpoint)" if kind == "projector" else "LoRA adapters"
        raise CheckpointError(f"{model_path} holds {what}; pass the model it was trained from as model_base "
                              "(--model-base): the LLM, or the mvlm checkpoint the run started from")
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise CheckpointError(f"{model_path} holds {kind} weights but no config.json (mvlm writes one next to "
                              "them); copy it from the run's output folder")
    config = MvlmLlavaConfig.from_pretrained(model_path)
    if is_full_checkpoint(model_base):
        model = LlavaForCausalLM.from_pretrained(model_base, **load_kwargs)
    elif not config.mm_vision_tower:
        raise CheckpointError(f"{model_path}/config.json does not say which vision tower it was trained with "
                              "(mm_vision_tower)")
    else:
        model, _, _ = build_model(
            model_base,
            config.mm_vision_tower,
            projector_type=config.projector_type,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            torch_dtype=load_kwargs["dtype"],
            attn_implementation=load_kwargs.get("attn_implementation"),
            quantization_config=load_kwargs["quantization_config"],
            device_map=load_kwargs["device_map"],
        )
    for key in ("conv_mode", "image_aspect_ratio", "image_grid_pinpoints"):
        setattr(model.config, key, getattr(config, key))
    return model
