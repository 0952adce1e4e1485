"""Where a model runs, and where its inputs go."""

from __future__ import annotations

import torch

from mvlm.errors import FlagError
from mvlm.model.modeling import LlavaForCausalLM


def default_device() -> str:
    """CUDA when there is a GPU, else the CPU (MPS is used only when asked for: `--device mps`)."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def check_device(device: str) -> str:
    """`device` if this machine has it; a clear error instead of a failure deep inside model loading."""
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise FlagError(f"--device {device!r} is not a device; use cpu, cuda or mps") from error
    if kind == "cuda" and not torch.cuda.is_available():
        raise FlagError(f"--device {device}: no CUDA GPU is available here; use --device cpu")
    if kind == "mps" and not torch.backends.mps.is_available():
        raise FlagError(f"--device {device}: MPS (Apple GPU) is not available here; use --device cpu")
    return device


def input_device(model: LlavaForCausalLM) -> torch.device:
    """Where the prompt ids must go: the device of the token embeddings (device maps may spread the rest)."""
    return model.get_input_embeddings().weight.device
