"""Mipha and LLaVA-Phi (`model_type` `mipha_phi`, `mipha_gemma`, `mipha_phi3`, `llava_phi`): the LLM's
config with `vision_config = {"vision_tower": {...}, "mm_projector": {...}}` nested in it, the tower's
weights inside the checkpoint (`model.vision_tower.vision_model.*`), the projector as
`model.mm_projector.{0,2}.*`, LLM keys `model.*` + `lm_head.*` (Phi-2's head has a bias).

Mipha picks CLIP or SigLIP by a substring of `vision_model_name_or_path`; here the tower's own weights
decide (a CLIP tower has a class embedding, a SigLIP one has none). Mipha's SigLIP keeps every patch
whatever `mm_vision_select_feature` says; its CLIP drops the CLS token for 'patch'.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, CLIPVisionConfig, SiglipVisionConfig

from mvlm.errors import CheckpointError
from mvlm.loading.formats.common import (
    ImportOptions,
    assemble,
    load_language_model,
    load_tower,
    read_config_dict,
    read_tensors,
    tensor_names,
    text_config_from,
)
from mvlm.model.projector_weights import llava_projector_weights
from mvlm.model.vision import default_image_processor, prepare_vision_config, strategy_for_select_feature

TEXT_MODEL_TYPES = {"mipha_phi": "phi", "llava_phi": "phi", "mipha_gemma": "gemma", "mipha_phi3": "phi3"}
CONV_MODES = {"mipha_phi": "phi", "llava_phi": "phi", "mipha_gemma": "gemma"}
"""The template Mipha's README and scripts prompt each model type with (`--conv-mode`)."""
TOWER_PREFIX = "model.vision_tower."
TOWER_FIELDS = ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_channels",
                "image_size", "patch_size", "hidden_act", "layer_norm_eps", "attention_dropout")
MULTIMODAL_KEYS = {"vision_config", "image_aspect_ratio", "mm_use_im_start_end", "mm_use_im_patch_token",
                   "tune_mm_mlp_adapter", "freeze_vision_tower", "mm_projector_lr", "tokenizer_padding_side",
                   "tokenizer_model_max_length", "architectures"}


def is_mipha(config: dict[str, Any]) -> bool:
    nested = config.get("vision_config")
    return (config.get("model_type") in TEXT_MODEL_TYPES and isinstance(nested, dict)
            and "vision_tower" in nested and "mm_projector" in nested)


def tower_config(model_path: str, values: dict[str, Any]) -> Any:
    """CLIP or SigLIP vision config from Mipha's tower dict, the kind read from the tower's weights."""
    names = [name for name in tensor_names(model_path) if name.startswith(TOWER_PREFIX)]
    if not names:
        raise CheckpointError(f"{model_path} holds no tower weights ({TOWER_PREFIX}*); Mipha checkpoints carry their tower")
    fields = {key: values[key] for key in TOWER_FIELDS if key in values}
    if any(name.endswith("embeddings.class_embedding") for name in names):
        return CLIPVisionConfig(**fields)
    if any(name.endswith("embeddings.patch_embedding.bias") for name in names):
        return prepare_vision_config(SiglipVisionConfig(**fields))
    raise CheckpointError(f"{model_path}: its tower is neither CLIP nor SigLIP (Mipha's DINOv2 towers are not supported)")


def load(model_path: str, options: ImportOptions) -> tuple[Any, Any, Any]:
    config = read_config_dict(model_path)
    if config.get("mm_use_im_start_end"):
        raise CheckpointError(f"{model_path}: mm_use_im_start_end wraps images in extra tokens, which mvlm does not")
    tower_values = config["vision_config"]["vision_tower"]
    projector_values = config["vision_config"]["mm_projector"]
    text_config = text_config_from(TEXT_MODEL_TYPES[config["model_type"]], config, MULTIMODAL_KEYS)
    vision_config = tower_config(model_path, tower_values)
    language_model = load_language_model(model_path, text_config, options)
    tower = load_tower(model_path, vision_config, options, {"^" + TOWER_PREFIX.replace(".", r"\."): ""})
    projector = llava_projector_weights(read_tensors(model_path, lambda key: ".mm_projector." in key), model_path)
    is_clip = vision_config.model_type == "clip_vision_model"
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if os.path.isfile(os.path.join(model_path, "preprocessor_config.json")):
        image_processor = AutoImageProcessor.from_pretrained(model_path, backend="pil")
    else:
        image_processor = default_image_processor(vision_config)
    return assemble(
        tower,
        language_model,
        tokenizer,
        image_processor,
        projector_type=projector_values.get("mm_projector_type", "linear"),
        projector_weights=projector,
        source=model_path,
        vision_feature_layer=tower_values.get("mm_vision_select_layer", -2),
        vision_feature_select_strategy=strategy_for_select_feature(tower_values.get("mm_vision_select_feature"), model_path)
        if is_clip else "full",
        image_aspect_ratio="pad" if config.get("image_aspect_ratio") == "pad" else "square",
        conv_mode=CONV_MODES.get(config["model_type"]),
        mm_vision_tower=model_path,
    )
