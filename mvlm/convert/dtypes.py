"""The dtype converters write: the one the checkpoint records unless the user names another (--dtype)."""

from __future__ import annotations

import json
import os

import torch

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def checkpoint_dtype(model_path: str) -> torch.dtype:
    """The dtype a checkpoint's config records (mvlm's or its LLM's), float32 when none."""
    path = os.path.join(model_path, "config.json")
    config = {}
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as handle:
            config = json.load(handle)
    nested = config.get("text_config") if isinstance(config.get("text_config"), dict) else {}
    name = config.get("dtype") or config.get("torch_dtype") or nested.get("dtype") or nested.get("torch_dtype")
    return getattr(torch, name) if isinstance(name, str) and isinstance(getattr(torch, name, None), torch.dtype) \
        else torch.float32
