"""LlavaForCausalLM: a vision tower, a projector and any HuggingFace causal LM, joined by composition.

The language model is the whole causal LM with its own head (Phi-2's biased head, Gemma's soft-capping
and tied heads stay right). Images enter as runs of `<image>` token ids that the data pipeline already
expanded to one id per feature; the model swaps the embeddings at those positions for projected
features and otherwise hands everything to the language model.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import AutoModel, AutoModelForCausalLM, GenerationMixin, PreTrainedModel

from mvlm.model.configuration import MvlmLlavaConfig
from mvlm.model.fused_forward import fused_loss_forward
from mvlm.model.projector import build_projector
from mvlm.model.tower_depth import run_to_feature_layers
from mvlm.model.vision import image_size, num_image_tokens, select_features, vision_tower_spec


class LlavaForCausalLM(PreTrainedModel, GenerationMixin):
    config: MvlmLlavaConfig
    config_class = MvlmLlavaConfig
    base_model_prefix = "mvlm"
    main_input_name = "input_ids"
    input_modalities = ("image", "text")
    supports_gradient_checkpointing = True
    _supports_flash_attn = True
    _supports_sdpa = True
    _supports_flex_attn = True
    _supports_attention_backend = True
    _skip_keys_device_placement = ["past_key_values", "cache"]  # the KV cache, old name and new

    def __init__(
        self,
        config: MvlmLlavaConfig,
        vision_tower: nn.Module | None = None,
        language_model: nn.Module | None = None,
    ):
        """Build from `config`; `vision_tower` / `language_model` may be passed already loaded (the builder does)."""
        super().__init__(config)
        self.vision_tower = vision_tower if vision_tower is not None else AutoModel.from_config(config.vision_config)
        self.language_model = (
            language_model if language_model is not None else AutoModelForCausalLM.from_config(config.text_config)
        )
        # One config object per part, so that resizing embeddings or changing attention shows up on save.
        config.vision_config = self.vision_tower.config
        config.text_config = self.language_model.config
        vision_channels = config.vision_config.hidden_size * _num_layers(config.vision_feature_layer)
        self.multi_modal_projector = build_projector(
            config.projector_type, vision_channels, config.text_config.hidden_size
        )
        self._no_split_modules = _union_no_split_modules(self.vision_tower, self.language_model)
        self.post_init()
        # Decoding defaults (EOS ids, ...) are the language model's, e.g. from its generation_config.json.
        self.generation_config = self.language_model.generation_config

    # Embeddings and head belong to the language model; transformers' resizing and tying go through these.
    def get_input_embeddings(self) -> nn.Module:
        return self.language_model.get_input_embeddings()

    def set_input_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_input_embeddings(value)

    def get_output_embeddings(self) -> nn.Module | None:
        return self.language_model.get_output_embeddings()

    def set_output_embeddings(self, value: nn.Module) -> None:
        self.language_model.set_output_embeddings(value)

    @property
    def num_image_tokens(self) -> int:
        """How many `<image>` tokens one image (or one anyres tile) stands for."""
        return num_image_tokens(self.config.vision_config, self.config.vision_feature_select_strategy)

    def get_image_features(self, pixel_values: torch.Tensor | list[torch.Tensor]) -> torch.Tensor:
        """Projected features, shape (images, num_image_tokens, text hidden size).

        Anyres views, (images, views, 3, H, W) or a list of (views, 3, H, W), are flattened into one batch.
        """
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.cat([views.reshape(-1, *views.shape[-3:]) for views in pixel_values], dim=0)
        else:
            pixel_values = pixel_values.reshape(-1, *pixel_values.shape[-3:])
        tower_dtype = next(self.vision_tower.parameters()).dtype
        # Only the layers up to the deepest feature layer run (mvlm.model.tower_depth).
        hidden_states, layers = run_to_feature_layers(
            self.vision_tower, pixel_values.to(tower_dtype), self.config.vision_feature_layer
        )
        features = select_features(
            hidden_states,
            layers,
            self.config.vision_feature_select_strategy,
            vision_tower_spec(self.config.vision_config).has_cls_token,
        )
        projector_dtype = _first_dtype(self.multi_modal_projector, features.dtype)
        return self.multi_modal_projector(features.to(projector_dtype))

    def embed_multimodal(
        self, input_ids: torch.LongTensor, pixel_values: torch.Tensor | list[torch.Tensor] | None
    ) -> torch.Tensor:
        """Token embeddings with projected image features written over the `<image>` positions."""
        inputs_embeds = self.get_input_embeddings()(input_ids)
        image_mask = input_ids == self.config.image_token_id
        num_tokens = int(image_mask.sum())
        if pixel_values is None:
            if num_tokens:
                raise ValueError(f"input_ids hold {num_tokens} image tokens but no pixel_values were given")
            if self.training and torch.is_grad_enabled():
                inputs_embeds = inputs_embeds + self._touch_vision_parameters(inputs_embeds)
            return inputs_embeds
        features = self.get_image_features(pixel_values)
        if num_tokens != features.shape[0] * features.shape[1]:
            raise ValueError(
                f"input_ids hold {num_tokens} image tokens, but the {features.shape[0]} image(s) in pixel_values "
                f"yield {features.shape[0] * features.shape[1]} features ({features.shape[1]} each); expand each "
                "<image> to model.num_image_tokens tokens (mvlm.data.tokenize does) and pass one image per <image>"
            )
        features = features.reshape(-1, features.shape[-1]).to(inputs_embeds.device, inputs_embeds.dtype)
        return inputs_embeds.masked_scatter(image_mask.unsqueeze(-1), features)

    def _touch_vision_parameters(self, inputs_embeds: torch.Tensor) -> torch.Tensor:
        """Zero that depends on every tower and projector parameter, for text-only training batches.

        DDP and DeepSpeed ZeRO-3 hang or fail when one rank's step uses parameters another rank's does
        not; running a blank image through the tower and projector (times 0) keeps every rank alike.
        """
        blank = torch.zeros(1, 3, *image_size(self.config.vision_config), device=inputs_embeds.device)
        return 0.0 * self.get_image_features(blank).sum().to(inputs_embeds.dtype)

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        **kwargs: Any,
    ):
        """Fuse images into the embeddings, then run the language model (which also computes the loss; in
        training with `config.fused_loss`, from its last hidden states without logits: `logits` is then None).

        A KV cache travels in `kwargs` under whichever name the installed transformers uses
        (`past_key_values`, or `cache` in newer releases, which warn on every call given the old name).
        """
        if (input_ids is None) == (inputs_embeds is None):
            raise ValueError("pass exactly one of input_ids or inputs_embeds")
        if inputs_embeds is None:
            inputs_embeds = self.embed_multimodal(input_ids, pixel_values)
        if use_cache is None and labels is not None:
            # A loss needs no cache, and with one transformers ignores packed rows' restarting position_ids.
            use_cache = False
        if labels is not None and self.training and self.config.fused_loss:
            # The loss from the last hidden states, no logits (mvlm.model.fused_loss); None: LM unsupported.
            fused = fused_loss_forward(self.language_model, inputs_embeds, labels, attention_mask=attention_mask,
                                       position_ids=position_ids, use_cache=use_cache, **kwargs)
            if fused is not None:
                return fused
        return self.language_model(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            position_ids=position_ids,
            labels=labels,
            use_cache=use_cache,
            logits_to_keep=logits_to_keep,
            **kwargs,
        )

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | list[torch.Tensor] | None = None,
        attention_mask: torch.Tensor | None = None,
        **generation_kwargs: Any,
    ) -> torch.LongTensor:
        """Fuse once, then let the language model's own `generate` decode; returns only the new tokens."""
        inputs_embeds = self.embed_multimodal(input_ids, pixel_values)
        if attention_mask is None:
            attention_mask = torch.ones(input_ids.shape, dtype=torch.long, device=input_ids.device)
        generation_kwargs.setdefault("generation_config", self.generation_config)
        return self.language_model.generate(
            inputs_embeds=inputs_embeds, attention_mask=attention_mask, **generation_kwargs
        )


def _num_layers(vision_feature_layer: int | list[int]) -> int:
    return 1 if isinstance(vision_feature_layer, int) else len(vision_feature_layer)


def _first_dtype(module: nn.Module, fallback: torch.dtype) -> torch.dtype:
    """dtype of a module's first floating parameter (a parameter-free projector keeps the features' dtype)."""
    for parameter in module.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    return fallback


def _union_no_split_modules(*modules: nn.Module) -> list[str]:
    """Blocks that `device_map='auto'` must keep whole: those of the tower and of the language model."""
    names: list[str] = []
    for module in modules:
        for name in getattr(module, "_no_split_modules", None) or []:
            if name not in names:
                names.append(name)
    return names
