"""Run the vision tower only as deep as the feature layers reach, and name the tower weights that leaves unused.

LLaVA reads the second-to-last hidden state of its tower (`vision_feature_layer` -2): the last encoder layer
and the final norm then run for nothing, and `--unfreeze_mm_vision_tower` would train them for nothing (no
gradient ever reaches them). During each forward the encoder's layer list is cut to the layers the features
need and restored afterwards; the weights themselves stay, so checkpoints keep their layout and every tool
that runs the whole tower (transformers' LLaVA after export) computes the same features.

Every supported tower records hidden_states as its input to the first layer then each layer's output (index 0
the embeddings, num_layers + 1 entries), before any final norm, so the cut run's hidden_states[i] is the full
run's for every i it has. Feature indices are resolved against the whole depth first.
"""

from __future__ import annotations

import contextlib
import weakref
from typing import Iterator

import torch
from torch import nn

from mvlm.errors import FlagError
from mvlm.model.vision import vision_tower_spec

_ran_whole: weakref.WeakSet[nn.Module] = weakref.WeakSet()


def feature_layer_indices(vision_feature_layer: int | list[int], num_layers: int) -> list[int]:
    """Non-negative indices into the whole tower's hidden states (num_layers + 1 of them) for each feature layer."""
    layers = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
    indices = []
    for layer in layers:
        index = layer + num_layers + 1 if layer < 0 else layer
        if not 0 <= index <= num_layers:
            raise FlagError(f"vision_feature_layer {layer} does not exist in a tower of {num_layers} layers (its "
                             f"hidden states are {-num_layers - 1} .. {num_layers}, 0 the embeddings)")
        indices.append(index)
    return indices


class _FirstLayers(nn.ModuleList):
    """The first layers of an encoder's list, standing in for the whole list during one forward."""

    def __init__(self, whole: nn.ModuleList, count: int):
        super().__init__(list(whole)[:count])
        object.__setattr__(self, "whole", whole)  # a plain attribute: not a second registration of the layers


def encoder_layers(tower: nn.Module) -> nn.ModuleList:
    """The tower's whole encoder layer list (also while a forward runs with it cut)."""
    layers = tower.get_submodule(vision_tower_spec(tower.config).encoder_layers)
    return layers.whole if isinstance(layers, _FirstLayers) else layers


@contextlib.contextmanager
def first_layers_only(tower: nn.Module, count: int) -> Iterator[None]:
    """Run the tower with only its first `count` encoder layers inside the block; the whole list after it.

    Concurrent or nested blocks are safe: each restores the whole list, never whatever it found.
    """
    whole = encoder_layers(tower)
    if count >= len(whole):
        yield
        return
    owner_path, _, name = vision_tower_spec(tower.config).encoder_layers.rpartition(".")
    owner = tower.get_submodule(owner_path)
    setattr(owner, name, _FirstLayers(whole, count))
    try:
        yield
    finally:
        setattr(owner, name, whole)


def run_to_feature_layers(
    tower: nn.Module, pixel_values: torch.Tensor, vision_feature_layer: int | list[int]
) -> tuple[tuple[torch.Tensor, ...], list[int]]:
    """The tower's hidden states up to its deepest feature layer, and each feature layer's index into them."""
    indices = feature_layer_indices(vision_feature_layer, len(encoder_layers(tower)))
    # At least one layer runs: the embeddings (index 0) are recorded as the first layer's input. A tower's
    # first run is whole: transformers installs its hidden-state hooks then, on the layers the list holds.
    count = max(1, *indices) if tower in _ran_whole else len(encoder_layers(tower))
    with first_layers_only(tower, count):
        outputs = tower(pixel_values, output_hidden_states=True, return_dict=True)
    _ran_whole.add(tower)
    return outputs.hidden_states, indices


def unused_tower_modules(tower: nn.Module, vision_feature_layer: int | list[int]) -> list[tuple[str, nn.Module]]:
    """(path, module) of what the features never depend on: the encoder layers past the deepest feature layer
    and the modules after the encoder (final norm, pooling head), whose outputs mvlm never reads."""
    spec = vision_tower_spec(tower.config)
    whole = encoder_layers(tower)
    first_unused = max(feature_layer_indices(vision_feature_layer, len(whole)))
    paths = [f"{spec.encoder_layers}.{index}" for index in range(first_unused, len(whole))]
    paths += [path for path in spec.after_encoder if _has_submodule(tower, path)]
    return [(path, tower.get_submodule(path)) for path in paths]


def _has_submodule(module: nn.Module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True
