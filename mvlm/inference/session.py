"""A model ready to answer: the one loader's bundle, with the chat template it will prompt with."""

from __future__ import annotations

from mvlm.inference.prompts import resolve_conv_mode
from mvlm.loading import LoadedModel, load_model


def load_for_inference(
    model_path: str,
    model_base: str | None = None,
    *,
    device: str,
    conv_mode: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = None,
) -> LoadedModel:
    """Load any model folder (`mvlm.loading.load_model`) in eval mode; its `conv_mode` is then always set:
    `conv_mode` when given (e.g. `--conv-mode`), else the checkpoint's own, else a FlagError saying so."""
    loaded = load_model(model_path, model_base, device=device, device_map=device_map, load_8bit=load_8bit,
                        load_4bit=load_4bit)
    loaded.conv_mode = resolve_conv_mode(loaded.model, conv_mode, model_path)
    return loaded
