"""What an mvlm folder holds, decided by its files, never by its name.

A full checkpoint is a `config.json` with `model_type: mvlm_llava` next to safetensors weights (plus the
tokenizer and the image processor); a LoRA folder has `adapter_config.json`; a stage-1 folder has only
the projector (`mm_projector.safetensors`, or LLaVA's `mm_projector.bin`).
"""

from __future__ import annotations

import json
import os

from mvlm.constants import MVLM_MODEL_TYPE
from mvlm.errors import CheckpointError, CheckpointNotFoundError

SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
CHECKPOINT_KINDS = ("full", "lora", "projector")


def checkpoint_kind(model_path: str) -> str:
    """'full', 'lora' or 'projector', read from the files in `model_path`; a CheckpointError otherwise."""
    if not os.path.isdir(model_path):
        raise CheckpointNotFoundError(f"model path {model_path!r} is not a folder")
    files = set(os.listdir(model_path))
    if "adapter_config.json" in files:
        return "lora"
    if "config.json" in files and files & set(SAFETENSORS_WEIGHTS):
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
        if model_type == MVLM_MODEL_TYPE:
            return "full"
        raise CheckpointError(
            f"{model_path} holds a {model_type!r} checkpoint, not an mvlm one; build a model from it with "
            "mvlm.model.builder.build_model(llm=..., vision_tower=...)"
        )
    if files & {"mm_projector.safetensors", "mm_projector.bin"}:
        return "projector"
    raise CheckpointError(
        f"{model_path} holds no mvlm checkpoint: expected config.json with safetensors weights, "
        f"adapter_config.json (LoRA) or mm_projector.safetensors; found {sorted(files) or 'nothing'}"
    )


def is_full_checkpoint(path: str) -> bool:
    """Whether `path` is a folder holding a full mvlm checkpoint (never raises on what the folder holds)."""
    try:
        return checkpoint_kind(path) == "full"
    except (CheckpointError, json.JSONDecodeError):
        return False
