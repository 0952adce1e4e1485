"""mvlm: train, chat with, evaluate and export small LLaVA-style vision-language models.

The package itself imports nothing heavy, so command-line tools that need no model (the scorers,
`mvlm.data.check` without a tokenizer) start fast. The model API is loaded on first use:
`mvlm.LlavaForCausalLM`, `from mvlm import load_model` (or LLaVA's `load_pretrained_model`), or
`import mvlm.model`, which also registers mvlm checkpoints with transformers' Auto classes.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
_HOMES = {
    "LlavaForCausalLM": "mvlm.model",
    "MvlmLlavaConfig": "mvlm.model",
    "build_model": "mvlm.model",
    "save_checkpoint": "mvlm.model",
    "LoadedModel": "mvlm.loading",
    "load_model": "mvlm.loading",
    "load_pretrained_model": "mvlm.loading",
}
__all__ = list(_HOMES)


def __getattr__(name: str) -> Any:
    if name in _HOMES:
        return getattr(importlib.import_module(_HOMES[name]), name)
    raise AttributeError(f"module 'mvlm' has no attribute {name!r}")
