"""Vision-tower registry: which encoders mvlm knows, keyed by their exact config `model_type`.

Feature selection is data (`vision_feature_layer`, `vision_feature_select_strategy`); the registry only
says what differs between towers: whether a CLS token leads the sequence, the default strategy, config
changes mvlm makes (SigLIP's pooling head is never used, so it is not built), the preprocessing a
tower expects when its checkpoint ships no image processor, and where its encoder layers and final
modules are (mvlm runs the tower only as deep as the features need: mvlm.model.tower_depth).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import torch
from torch import nn
from transformers import AutoConfig, AutoModel, CLIPImageProcessorPil, PreTrainedConfig

from mvlm.constants import LLAVA_SELECT_FEATURES
from mvlm.errors import FlagError

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)


@dataclasses.dataclass(frozen=True)
class VisionTowerSpec:
    """What mvlm needs to know about one kind of vision encoder."""

    has_cls_token: bool
    default_select_strategy: str
    config_overrides: dict[str, Any]
    image_mean: tuple[float, float, float]
    image_std: tuple[float, float, float]
    center_crop: bool
    """True when the tower was trained on shortest-edge resize + center crop (CLIP); else a plain resize."""
    encoder_layers: str
    """Path of the encoder's layer list, whose outputs are the tower's hidden states (mvlm.model.tower_depth)."""
    after_encoder: tuple[str, ...]
    """Modules applied after the encoder layers (final norm, pooling head): mvlm reads none of their outputs."""


VISION_TOWERS: dict[str, VisionTowerSpec] = {
    "clip_vision_model": VisionTowerSpec(
        has_cls_token=True,
        default_select_strategy="default",
        config_overrides={},
        image_mean=CLIP_MEAN,
        image_std=CLIP_STD,
        center_crop=True,
        encoder_layers="encoder.layers",
        after_encoder=("post_layernorm",),
    ),
    "siglip_vision_model": VisionTowerSpec(
        has_cls_token=False,
        default_select_strategy="full",
        config_overrides={"vision_use_head": False},
        image_mean=HALF,
        image_std=HALF,
        center_crop=False,
        encoder_layers="encoder.layers",
        after_encoder=("post_layernorm", "head"),
    ),
    "internvl_vision": VisionTowerSpec(
        has_cls_token=True,
        default_select_strategy="default",
        config_overrides={},
        image_mean=IMAGENET_MEAN,
        image_std=IMAGENET_STD,
        center_crop=False,
        encoder_layers="encoder.layer",
        after_encoder=("layernorm",),
    ),
}

# Full image-text (or image-chat) checkpoints whose vision half is taken as the tower.
VISION_HALF_OF: dict[str, str] = {"clip": "vision_config", "siglip": "vision_config", "internvl": "vision_config"}

SELECT_STRATEGIES = ("default", "full")


def vision_tower_spec(vision_config: PreTrainedConfig) -> VisionTowerSpec:
    model_type = vision_config.model_type
    if model_type not in VISION_TOWERS:
        raise FlagError(
            f"vision tower model_type {model_type!r} is not supported; mvlm knows: {', '.join(sorted(VISION_TOWERS))}"
        )
    return VISION_TOWERS[model_type]


def load_vision_config(name_or_path: str) -> PreTrainedConfig:
    """The vision config of a tower checkpoint, taking the vision half of a full CLIP/SigLIP/InternVL one."""
    config = AutoConfig.from_pretrained(name_or_path)
    if config.model_type in VISION_HALF_OF:
        config = getattr(config, VISION_HALF_OF[config.model_type])
    vision_tower_spec(config)
    return prepare_vision_config(config)


def prepare_vision_config(vision_config: PreTrainedConfig) -> PreTrainedConfig:
    """Apply the registry's config changes (e.g. no SigLIP pooling head)."""
    for key, value in vision_tower_spec(vision_config).config_overrides.items():
        setattr(vision_config, key, value)
    return vision_config


def load_vision_tower(name_or_path: str, vision_config: PreTrainedConfig, **from_pretrained_kwargs: Any) -> nn.Module:
    """Pretrained weights of the tower; transformers maps older key layouts and drops the unused text half."""
    return AutoModel.from_pretrained(name_or_path, config=vision_config, **from_pretrained_kwargs)


def strategy_for_select_feature(select_feature: str | None, source: str = "mm_vision_select_feature") -> str | None:
    """LLaVA's `mm_vision_select_feature` as mvlm's select strategy, for `resolve_select_strategy`.

    'patch' (or unset) is the tower's default, None here: drop the CLS token where the tower has one.
    'cls_patch' keeps it: 'full'.
    """
    if select_feature in (None, "patch"):
        return None
    if select_feature == "cls_patch":
        return "full"
    raise FlagError(f"{source}: mm_vision_select_feature {select_feature!r} is not one LLaVA knows "
                     f"({', '.join(LLAVA_SELECT_FEATURES)})")


def resolve_select_strategy(vision_config: PreTrainedConfig, strategy: str | None) -> str:
    """The registry default when `strategy` is None; refuses dropping a CLS token that a tower lacks."""
    spec = vision_tower_spec(vision_config)
    strategy = spec.default_select_strategy if strategy is None else strategy
    if strategy not in SELECT_STRATEGIES:
        raise FlagError(f"vision_feature_select_strategy must be one of {SELECT_STRATEGIES}, got {strategy!r}")
    if strategy == "default" and not spec.has_cls_token:
        raise FlagError(
            f"{vision_config.model_type} has no CLS token, so vision_feature_select_strategy='default' would drop a "
            "real image patch; use 'full'"
        )
    return strategy


def _pair(value: int | list[int] | tuple[int, int]) -> tuple[int, int]:
    if isinstance(value, int):
        return value, value
    return int(value[0]), int(value[1])


def image_size(vision_config: PreTrainedConfig) -> tuple[int, int]:
    """(height, width) of the images the tower takes."""
    return _pair(vision_config.image_size)


def num_patches(vision_config: PreTrainedConfig) -> int:
    height, width = image_size(vision_config)
    patch_height, patch_width = _pair(vision_config.patch_size)
    return (height // patch_height) * (width // patch_width)


def num_image_tokens(vision_config: PreTrainedConfig, strategy: str) -> int:
    """How many features (and so `<image>` tokens) one image yields after feature selection."""
    spec = vision_tower_spec(vision_config)
    keeps_cls = spec.has_cls_token and strategy == "full"
    return num_patches(vision_config) + int(keeps_cls)


def select_features(
    hidden_states: tuple[torch.Tensor, ...], layers: int | list[int], strategy: str, has_cls_token: bool
) -> torch.Tensor:
    """Hidden states of the chosen layer(s), CLS dropped for 'default', concatenated along channels."""
    layer_list = [layers] if isinstance(layers, int) else list(layers)
    start = 1 if (strategy == "default" and has_cls_token) else 0
    return torch.cat([hidden_states[layer][:, start:] for layer in layer_list], dim=-1)


def default_image_processor(vision_config: PreTrainedConfig) -> CLIPImageProcessorPil:
    """Preprocessing for a tower whose checkpoint ships no image processor (e.g. a bare InternViT)."""
    spec = vision_tower_spec(vision_config)
    height, width = image_size(vision_config)
    if spec.center_crop:
        size: dict[str, int] = {"shortest_edge": min(height, width)}
    else:
        size = {"height": height, "width": width}
    return CLIPImageProcessorPil(
        size=size,
        crop_size={"height": height, "width": width},
        do_center_crop=spec.center_crop,
        image_mean=list(spec.image_mean),
        image_std=list(spec.image_std),
    )
