"""Official LLaVA (`liuhaotian/llava-v1.5-7b`, `xtuner/llava-phi-3-mini`): one config.json that is the
LLM's plus `mm_*` fields (`model_type` `llava`, `llava_llama` or `llava_mistral`), LLM keys `model.*` +
`lm_head.*`, the projector as `model.mm_projector.{0,2}.*`, and the tower either inside
(`model.vision_tower.vision_tower.vision_model.*`, used only when `unfreeze_mm_vision_tower`, as LLaVA
does) or loaded from `mm_vision_tower` (a hub id or local folder; `vision_tower=` overrides it).

LLaVA marked images with the sentinel id -200 and had no `<image>` token: it is added here.
"""

from __future__ import annotations

import os
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer

from mvlm.errors import CheckpointError
from mvlm.loading.formats.common import (
    ImportOptions,
    assemble,
    has_weights,
    load_language_model,
    load_tower,
    read_config_dict,
    read_tensors,
    tensor_names,
    text_config_from,
)
from mvlm.model.builder import load_image_processor
from mvlm.model.projector_weights import llava_projector_weights
from mvlm.model.vision import load_vision_config, load_vision_tower, strategy_for_select_feature

TEXT_MODEL_TYPES = {"llava": "llama", "llava_llama": "llama", "llava_mistral": "mistral"}
"""LLaVA's model types whose LLM transformers has (LLaVA-MPT used its own vendored MPT and is not read)."""
MULTIMODAL_KEYS = {
    "mm_vision_tower", "mm_projector_type", "mm_hidden_size", "mm_vision_select_layer", "mm_vision_select_feature",
    "image_aspect_ratio", "image_grid_pinpoints", "mm_use_im_start_end", "mm_use_im_patch_token",
    "mm_patch_merge_type", "mm_projector_lr", "mm_vision_tower_lr", "tune_mm_mlp_adapter", "freeze_mm_mlp_adapter",
    "unfreeze_mm_vision_tower", "use_mm_proj", "tokenizer_padding_side", "tokenizer_model_max_length",
    "mm_resampler_type", "s2", "s2_scales", "image_crop_resolution", "image_split_resolution", "architectures",
}
TOWER_PREFIX = "model.vision_tower.vision_tower."


def is_official_llava(config: dict[str, Any]) -> bool:
    return config.get("model_type") in (*TEXT_MODEL_TYPES, "llava_mpt") and (
        "mm_vision_tower" in config or "mm_hidden_size" in config
    )


def refuse_unrepresentable(config: dict[str, Any], source: str) -> None:
    """LLaVA features mvlm's model does not have; loading them anyway would give wrong outputs."""
    reasons = []
    if config.get("model_type") == "llava_mpt":
        reasons.append("LLaVA-MPT uses LLaVA's own MPT code, which transformers does not have")
    if config.get("mm_use_im_start_end"):
        reasons.append("mm_use_im_start_end wraps images in <im_start>/<im_end> tokens, which mvlm does not")
    if config.get("mm_patch_merge_type", "flat") != "flat" or config.get("image_aspect_ratio") == "anyres":
        reasons.append("LLaVA-NeXT's anyres with unpadding and image_newline is not mvlm's anyres")
    if config.get("s2"):
        reasons.append("S2 multi-scale towers are not supported")
    if reasons:
        raise CheckpointError(f"{source}: cannot be loaded faithfully: {'; '.join(reasons)}")


def load(model_path: str, options: ImportOptions) -> tuple[Any, Any, Any]:
    config = read_config_dict(model_path)
    refuse_unrepresentable(config, model_path)
    if not has_weights(model_path):
        if os.path.isfile(os.path.join(model_path, "adapter_config.json")):
            raise CheckpointError(f"{model_path} holds official LLaVA LoRA adapters, which mvlm does not read; merge them "
                             "with LLaVA's scripts/merge_lora_weights.py first, then load the merged folder")
        raise CheckpointError(f"{model_path} holds no LLM weights (a LLaVA stage-1 folder?); start mvlm's stage 2 from "
                         "its mm_projector.bin with --pretrain_mm_mlp_adapter instead")
    text_config = text_config_from(TEXT_MODEL_TYPES[config["model_type"]], config, MULTIMODAL_KEYS)
    tower_source = options.vision_tower or config.get("mm_vision_tower")
    if not tower_source:
        raise CheckpointError(f"{model_path}/config.json names no vision tower (mm_vision_tower); pass --vision-tower PATH")
    try:
        vision_config = load_vision_config(tower_source)
    except OSError as error:
        raise CheckpointError(
            f"{model_path}: its vision tower {tower_source!r} (mm_vision_tower) cannot be read ({error}); pass "
            "--vision-tower PATH (vision_tower=...) with a local copy of that tower"
        ) from error
    language_model = load_language_model(model_path, text_config, options)
    if config.get("unfreeze_mm_vision_tower") and any(name.startswith(TOWER_PREFIX) for name in tensor_names(model_path)):
        tower = load_tower(model_path, vision_config, options, {"^" + TOWER_PREFIX.replace(".", r"\."): ""})
    else:
        kwargs = {key: value for key, value in options.load_kwargs.items()
                  if key != "quantization_config" and value is not None}
        tower = load_vision_tower(tower_source, vision_config, **kwargs)
    projector = llava_projector_weights(read_tensors(model_path, lambda key: ".mm_projector." in key), model_path)
    projector_type = config.get("mm_projector_type", "linear")
    if projector_type != "identity" and config.get("mm_hidden_size") not in (None, vision_config.hidden_size):
        raise CheckpointError(f"{model_path}: mm_hidden_size {config['mm_hidden_size']} does not match the tower "
                         f"{tower_source} (hidden size {vision_config.hidden_size}); pass the right --vision-tower")
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if os.path.isdir(tower_source) and not os.path.isfile(os.path.join(tower_source, "preprocessor_config.json")) \
            and os.path.isfile(os.path.join(model_path, "preprocessor_config.json")):
        image_processor = AutoImageProcessor.from_pretrained(model_path, backend="pil")
    else:
        image_processor = load_image_processor(tower_source, vision_config)  # LLaVA takes the tower's processor
    aspect_ratio = config.get("image_aspect_ratio") or "square"
    return assemble(
        tower,
        language_model,
        tokenizer,
        image_processor,
        projector_type=projector_type,
        projector_weights=projector,
        source=model_path,
        vision_feature_layer=config.get("mm_vision_select_layer", -1),
        vision_feature_select_strategy=strategy_for_select_feature(config.get("mm_vision_select_feature"), model_path),
        image_aspect_ratio="pad" if aspect_ratio == "pad" else "square",
        mm_vision_tower=tower_source,
    )
