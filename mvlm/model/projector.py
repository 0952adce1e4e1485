"""Projector registry: maps vision features into the language model's embedding space, by exact name.

Names are LLaVA's `--mm_projector_type` values. Layers of `mlpNx_gelu` are named `linear_1`, `act`,
`linear_2`, ... so that saved keys read `multi_modal_projector.linear_1.weight`, as in HuggingFace's
LLaVA checkpoints.
"""

from __future__ import annotations

import re

import torch
from torch import nn

from mvlm.errors import FlagError

MLP_GELU_PATTERN = re.compile(r"mlp([1-9][0-9]*)x_gelu")
PROJECTOR_TYPES = ("linear", "mlp{N}x_gelu", "identity")


class MlpGeluProjector(nn.Module):
    """N linear layers with GELU between them (`mlp2x_gelu` is LLaVA-1.5's projector)."""

    def __init__(self, depth: int, in_features: int, out_features: int):
        super().__init__()
        self.depth = depth
        self.act = nn.GELU()
        self.linear_1 = nn.Linear(in_features, out_features)
        for index in range(2, depth + 1):
            setattr(self, f"linear_{index}", nn.Linear(out_features, out_features))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        hidden = self.linear_1(features)
        for index in range(2, self.depth + 1):
            hidden = getattr(self, f"linear_{index}")(self.act(hidden))
        return hidden


def build_projector(projector_type: str, vision_hidden_size: int, text_hidden_size: int) -> nn.Module:
    """A fresh projector of the named type from `vision_hidden_size` to `text_hidden_size` features."""
    if projector_type == "linear":
        return nn.Linear(vision_hidden_size, text_hidden_size)
    if projector_type == "identity":
        if vision_hidden_size != text_hidden_size:
            raise FlagError(
                f"projector 'identity' needs equal sizes, but vision features have {vision_hidden_size} channels "
                f"and the language model's embeddings {text_hidden_size}; use 'linear' or 'mlp2x_gelu'"
            )
        return nn.Identity()
    match = MLP_GELU_PATTERN.fullmatch(projector_type)
    if match:
        return MlpGeluProjector(int(match.group(1)), vision_hidden_size, text_hidden_size)
    raise FlagError(f"unknown projector type {projector_type!r}; mvlm knows: {', '.join(PROJECTOR_TYPES)}")
