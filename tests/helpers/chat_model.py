"""A tiny chat checkpoint for the CLI and runner tests: random weights spread wide enough that answers
depend on the prompt and the image (at the default init every prompt gets much the same tokens).
The fixtures `model_dir` and `loaded` (tests/conftest.py) save and load it once per test module.
"""

from __future__ import annotations

import torch

from mvlm.model.builder import build_model, save_checkpoint


@torch.no_grad()
def spread_weights(model: torch.nn.Module, std: float = 0.3, seed: int = 0) -> None:
    """Redraw every matrix from N(0, std^2): greedy outputs then vary with the input instead of repeating."""
    generator = torch.Generator().manual_seed(seed)
    for parameter in model.parameters():
        if parameter.dim() >= 2:
            parameter.copy_(torch.randn(parameter.shape, generator=generator) * std)


def save_chat_checkpoint(checkpoints, folder: str, conv_mode: str | None = "v1", family: str = "llama",
                         image_aspect_ratio: str = "pad") -> str:
    """Build llama + CLIP from the `checkpoints` fixture, spread its weights, store the template, save."""
    model, tokenizer, image_processor = build_model(checkpoints("llm", family), checkpoints("tower", "clip"))
    spread_weights(model)
    model.config.conv_mode = conv_mode
    model.config.image_aspect_ratio = image_aspect_ratio
    save_checkpoint(folder, model, tokenizer, image_processor)
    return folder
