"""Save and load the projector alone: stage 1's output and `--pretrain_mm_mlp_adapter`'s input.

mvlm writes `mm_projector.safetensors` with the model's own key names
(`multi_modal_projector.linear_1.weight`, ...). Reading also accepts LLaVA's `mm_projector.bin`, whose
keys are `model.mm_projector.0.weight`, `model.mm_projector.2.weight`, ... (a Sequential of Linear and
GELU), read with `torch.load(weights_only=True)`.
"""

from __future__ import annotations

import os
import re

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from mvlm.errors import CheckpointError, CheckpointNotFoundError
from mvlm.model.zero3 import gathered

PROJECTOR_FILE = "mm_projector.safetensors"
LLAVA_PROJECTOR_FILE = "mm_projector.bin"
PREFIX = "multi_modal_projector."
_LLAVA_KEY = re.compile(r"(?:.*\.)?mm_projector\.(?:(\d+)\.)?(weight|bias)")


def projector_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The projector's tensors under their full model key names, contiguous and on the CPU."""
    return {
        PREFIX + name: tensor.detach().to("cpu").contiguous()
        for name, tensor in model.multi_modal_projector.state_dict().items()
    }


def save_projector(state_dict: dict[str, torch.Tensor], output_dir: str) -> str:
    """Write `mm_projector.safetensors` (only the `multi_modal_projector.*` entries of `state_dict`)."""
    os.makedirs(output_dir, exist_ok=True)
    tensors = {key: value.detach().to("cpu").contiguous() for key, value in state_dict.items() if key.startswith(PREFIX)}
    if not tensors:
        raise ValueError("no multi_modal_projector.* tensors to save")
    path = os.path.join(output_dir, PROJECTOR_FILE)
    save_file(tensors, path, metadata={"format": "pt"})
    return path


def find_projector_file(path: str) -> str:
    """The projector file itself, or the one inside a folder (mvlm's, else LLaVA's)."""
    if os.path.isdir(path):
        for name in (PROJECTOR_FILE, LLAVA_PROJECTOR_FILE):
            if os.path.isfile(os.path.join(path, name)):
                return os.path.join(path, name)
        raise CheckpointNotFoundError(f"{path} holds neither {PROJECTOR_FILE} nor {LLAVA_PROJECTOR_FILE}")
    if not os.path.isfile(path):
        raise CheckpointNotFoundError(f"projector weights {path} do not exist")
    return path


def read_projector_weights(path: str) -> dict[str, torch.Tensor]:
    """Projector tensors keyed by the projector's own parameter names (`linear_1.weight`, ...)."""
    path = find_projector_file(path)
    if path.endswith(".safetensors"):
        tensors = load_file(path)
        return {key[len(PREFIX):]: value for key, value in tensors.items() if key.startswith(PREFIX)}
    return _from_llava_keys(torch.load(path, map_location="cpu", weights_only=True), path)


def _from_llava_keys(tensors: dict[str, torch.Tensor], path: str) -> dict[str, torch.Tensor]:
    """LLaVA's Sequential indices 0, 2, 4, ... are our linear_1, linear_2, ...; a bare Linear keeps its names."""
    renamed = {}
    for key, value in tensors.items():
        match = _LLAVA_KEY.fullmatch(key)
        if not match:
            raise CheckpointError(f"{path}: unexpected key {key!r} in a LLaVA projector file")
        index, kind = match.groups()
        renamed[kind if index is None else f"linear_{int(index) // 2 + 1}.{kind}"] = value
    return renamed


def load_projector_weights(model: nn.Module, path: str) -> None:
    """Load projector weights into `model`, refusing missing, extra or mis-shaped tensors."""
    assign_projector_weights(model, read_projector_weights(path), path)


def llava_projector_weights(tensors: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """LLaVA-named projector tensors (`model.mm_projector.0.weight`, ...) under the projector's own names."""
    return _from_llava_keys(tensors, source)


def assign_projector_weights(model: nn.Module, weights: dict[str, torch.Tensor], path: str) -> None:
    """Put `weights` (the projector's own names) into `model`'s projector; `path` names their source in errors."""
    projector = model.multi_modal_projector
    # Under ZeRO-3 (continuing an mvlm checkpoint) the weights are partitioned: check and write whole ones.
    with gathered(projector.parameters(), modify=True):
        expected = projector.state_dict()
        if set(weights) != set(expected):
            raise CheckpointError(
                f"projector weights in {path} have keys {sorted(weights)}, but this model's "
                f"{model.config.projector_type!r} projector needs {sorted(expected)}; check --mm_projector_type"
            )
        for key, tensor in weights.items():
            if tensor.shape != expected[key].shape:
                raise CheckpointError(
                    f"projector weights in {path}: {key} has shape {tuple(tensor.shape)}, the model needs "
                    f"{tuple(expected[key].shape)}; the stage-1 run used another LLM, tower or --mm_vision_select_layer"
                )
        projector.load_state_dict({key: value.to(expected[key].dtype) for key, value in weights.items()})
