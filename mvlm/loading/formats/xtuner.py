"""XTuner's LLaVA format (`xtuner convert pth_to_hf`, e.g. `xtuner/llava-phi-3-mini-xtuner`):

    FOLDER/                      the LLM and its tokenizer, when the LLM trained fully
    FOLDER/llm_adapter/          PEFT LoRA of the LLM, when it trained with LoRA (base: adapter_config.json)
    FOLDER/visual_encoder/       the tower and its image processor, when the tower trained fully
    FOLDER/visual_encoder_adapter/  PEFT LoRA of the tower
    FOLDER/projector/            ProjectorModel: config.json (depth, hidden sizes, act) + keys `model.{0,2}.*`

A part that did not train is not written: the LLM then comes from `model_base` (or the adapter's
base model) and the tower from `vision_tower`, as `xtuner chat --visual-encoder` takes it. XTuner selects
layer -2 (its default `visual_select_layer`, which the folder does not record), drops CLIP's CLS token
(not SigLIP's) and pads images to squares.
"""

from __future__ import annotations

import json
import os
import re
from typing import Any

from transformers import AutoConfig, AutoTokenizer

from mvlm.errors import CheckpointError
from mvlm.loading.formats.common import (
    ImportOptions,
    assemble,
    has_weights,
    load_language_model,
    load_tower,
    merge_adapter,
    read_config_dict,
    read_tensors,
)
from mvlm.model.builder import load_image_processor
from mvlm.model.vision import load_vision_config, load_vision_tower

PROJECTOR_DIR = "projector"
LLM_ADAPTER_DIR = "llm_adapter"
TOWER_DIR = "visual_encoder"
TOWER_ADAPTER_DIR = "visual_encoder_adapter"
XTUNER_SELECT_LAYER = -2
_PROJECTOR_KEY = re.compile(r"model\.(\d+)\.(weight|bias)")


def is_xtuner(model_path: str, _config: dict[str, Any] | None = None) -> bool:
    projector = read_config_dict(os.path.join(model_path, PROJECTOR_DIR))
    return projector is not None and projector.get("model_type") == "projector"


def _projector(model_path: str) -> tuple[str, dict[str, Any]]:
    folder = os.path.join(model_path, PROJECTOR_DIR)
    config = read_config_dict(folder)
    if config.get("hidden_act", "gelu") != "gelu" or not config.get("bias", True):
        raise CheckpointError(f"{folder}: a projector with act {config.get('hidden_act')!r} and bias "
                         f"{config.get('bias', True)} is not one of mvlm's (mlpNx_gelu with biases)")
    depth = int(config.get("depth", 2))
    weights = {}
    for key, value in read_tensors(folder, lambda _key: True).items():
        match = _PROJECTOR_KEY.fullmatch(key)
        if not match:
            raise CheckpointError(f"{folder}: unexpected key {key!r} in an XTuner projector")
        weights[f"linear_{int(match.group(1)) // 2 + 1}.{match.group(2)}"] = value
    return f"mlp{depth}x_gelu" if depth > 1 else "linear", weights if depth > 1 else {
        key.split(".", 1)[1]: value for key, value in weights.items()}


def _adapter_base(folder: str) -> str | None:
    with open(os.path.join(folder, "adapter_config.json"), encoding="utf-8") as handle:
        return json.load(handle).get("base_model_name_or_path")


def load(model_path: str, options: ImportOptions) -> tuple[Any, Any, Any]:
    llm_adapter = os.path.join(model_path, LLM_ADAPTER_DIR)
    tower_adapter = os.path.join(model_path, TOWER_ADAPTER_DIR)
    has_llm_adapter, has_tower_adapter = os.path.isdir(llm_adapter), os.path.isdir(tower_adapter)
    if (has_llm_adapter or has_tower_adapter) and options.load_kwargs.get("quantization_config") is not None:
        raise CheckpointError(f"{model_path} holds LoRA adapters, which are merged on loading; merging into 4/8-bit "
                         "weights would round them: convert it first (python -m mvlm.convert.to_mvlm), then load "
                         "the result quantized")
    if read_config_dict(model_path) is not None and has_weights(model_path):
        llm_source = model_path
    else:
        llm_source = options.model_base or (_adapter_base(llm_adapter) if has_llm_adapter else None)
    if not llm_source:
        raise CheckpointError(f"{model_path} holds no LLM (it did not train fully); pass the LLM it was trained from as "
                         "--model-base (model_base=...)")
    language_model = load_language_model(llm_source, AutoConfig.from_pretrained(llm_source), options)
    if has_llm_adapter:
        language_model = merge_adapter(language_model, llm_adapter)

    tower_folder = os.path.join(model_path, TOWER_DIR)
    tower_source = tower_folder if os.path.isdir(tower_folder) else options.vision_tower
    if tower_source is None:
        raise CheckpointError(f"{model_path} holds no {TOWER_DIR}/ (the tower was frozen); pass the tower it was trained "
                         "with as --vision-tower (vision_tower=...), e.g. openai/clip-vit-large-patch14-336")
    vision_config = load_vision_config(tower_source)
    if tower_source == tower_folder:
        tower = load_tower(tower_source, vision_config, options)
    else:
        kwargs = {key: value for key, value in options.load_kwargs.items()
                  if key != "quantization_config" and value is not None}
        tower = load_vision_tower(tower_source, vision_config, **kwargs)
    if has_tower_adapter:
        tower = merge_adapter(tower, tower_adapter)

    projector_type, projector = _projector(model_path)
    tokenizer_source = model_path if os.path.isfile(os.path.join(model_path, "tokenizer_config.json")) else llm_source
    return assemble(
        tower,
        language_model,
        AutoTokenizer.from_pretrained(tokenizer_source),
        load_image_processor(tower_source, vision_config),
        projector_type=projector_type,
        projector_weights=projector,
        source=model_path,
        vision_feature_layer=XTUNER_SELECT_LAYER,
        vision_feature_select_strategy=None,  # the tower's default: XTuner drops CLS where there is one
        image_aspect_ratio="pad",
        mm_vision_tower=options.vision_tower or tower_source,
    )
