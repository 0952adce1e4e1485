"""The composite config of an mvlm model: a vision config, a text config, and how they are joined."""

from __future__ import annotations

from transformers import AutoConfig, PreTrainedConfig

from mvlm.constants import MVLM_MODEL_TYPE
from mvlm.errors import FlagError
from mvlm.model.vision import prepare_vision_config, resolve_select_strategy


class MvlmLlavaConfig(PreTrainedConfig):
    """Config of `LlavaForCausalLM`.

    `text_config` is any causal LM's config and `vision_config` any registered tower's. The remaining
    fields say how features are chosen and projected, and what inference needs to reproduce training
    (`image_aspect_ratio`, `image_grid_pinpoints`, `conv_mode`).
    """

    model_type = MVLM_MODEL_TYPE
    # The plain `sub_configs` mapping (not 5.2x's SubConfigSpec) keeps every transformers >= 5.9 working.
    sub_configs = {"text_config": AutoConfig, "vision_config": AutoConfig}

    vision_config: dict | PreTrainedConfig | None = None
    text_config: dict | PreTrainedConfig | None = None
    projector_type: str = "mlp2x_gelu"
    vision_feature_layer: int | list[int] = -2
    vision_feature_select_strategy: str | None = None
    image_token_id: int | None = None
    image_aspect_ratio: str = "pad"
    image_grid_pinpoints: list[list[int]] | None = None
    conv_mode: str | None = None
    mm_vision_tower: str | None = None
    """Where the tower's pretrained weights came from: what a projector-only (stage-1) checkpoint builds on."""
    fused_loss: bool = False
    """True: training-mode forwards with labels compute the loss from the LM's last hidden states, labelled
    positions only, and return no logits (mvlm.model.fused_loss). `mvlm.train` sets it (--fused_loss, default
    True); eval-mode forwards and generation never fuse."""
    tie_word_embeddings: bool = False

    def __post_init__(self, **kwargs):
        self.vision_config = _as_config(self.vision_config, "clip_vision_model")
        self.text_config = _as_config(self.text_config, "llama")
        # transformers sets a composite config's attention implementation on its sub-configs, resetting
        # them to None when none is given; keep what the parts were loaded with instead (None silently
        # drops the causal mask of an already built language model).
        kwargs.setdefault(
            "attn_implementation",
            {
                key: getattr(self, key)._attn_implementation
                for key in ("text_config", "vision_config")
                if isinstance(getattr(self, key), PreTrainedConfig)
            },
        )
        super().__post_init__(**kwargs)
        prepare_vision_config(self.vision_config)
        self.vision_feature_select_strategy = resolve_select_strategy(
            self.vision_config, self.vision_feature_select_strategy
        )
        if isinstance(self.vision_feature_layer, list) and not self.vision_feature_layer:
            raise FlagError("vision_feature_layer is an empty list; give a layer index or a list of them")


def _as_config(value: dict | PreTrainedConfig | None, default_model_type: str) -> PreTrainedConfig:
    """A sub-config from its saved dict (its `model_type` picks the class), or the default type's defaults."""
    if isinstance(value, PreTrainedConfig):
        return value
    values = dict(value or {})
    return AutoConfig.for_model(values.pop("model_type", default_model_type), **values)
