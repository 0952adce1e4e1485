"""Which foreign format a checkpoint folder holds, decided by its `config.json` and files (never its
name), and loading it through that format's module."""

from __future__ import annotations

import importlib
from typing import Any

from mvlm.loading.formats.common import ImportOptions, read_config_dict
from mvlm.loading.formats.hf_llava import is_hf_llava
from mvlm.loading.formats.llava import is_official_llava
from mvlm.loading.formats.mipha import is_mipha
from mvlm.loading.formats.xtuner import is_xtuner

FORMAT_NAMES = {
    "hf_llava": "HuggingFace LLaVA (LlavaForConditionalGeneration)",
    "llava": "official LLaVA (LlavaLlamaForCausalLM)",
    "mipha": "Mipha / LLaVA-Phi",
    "xtuner": "XTuner LLaVA",
}


def detect_format(model_path: str) -> str | None:
    """'hf_llava', 'llava', 'mipha' or 'xtuner' for a foreign checkpoint folder; None for anything else
    (an mvlm checkpoint, or a folder that `checkpoint_kind` will explain)."""
    config = read_config_dict(model_path)
    if is_xtuner(model_path, config):
        return "xtuner"
    if config is None:
        return None
    for name, test in (("hf_llava", is_hf_llava), ("llava", is_official_llava), ("mipha", is_mipha)):
        if test(config):
            return name
    return None


def load_foreign(model_path: str, format_name: str, options: ImportOptions) -> tuple[Any, Any, Any]:
    """(model, tokenizer, image_processor) of a foreign checkpoint, as an mvlm `LlavaForCausalLM`."""
    module = importlib.import_module(f"mvlm.loading.formats.{format_name}")
    return module.load(model_path, options)

