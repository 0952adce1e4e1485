"""mvlm: train, chat with, evaluate and export small LLaVA-style vision-language models.

The package itself imports nothing heavy, so command-line tools that need no model (the scorers,
`mvlm.data.check` without a tokenizer) start fast. The model API is loaded on first use:
`mvlm.LlavaForCausalLM`, `from mvlm import load_pretrained_model`, or `import mvlm.model`, which also
registers mvlm checkpoints with transformers' Auto classes.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["LlavaForCausalLM", "MvlmLlavaConfig", "build_model", "load_pretrained_model", "save_checkpoint"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        return getattr(importlib.import_module("mvlm.model"), name)
    raise AttributeError(f"module 'mvlm' has no attribute {name!r}")
