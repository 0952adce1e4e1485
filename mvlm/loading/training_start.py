"""What a training run starts from, as its flags say; read once for training and the data check.

`--model_name_or_path` is either a model folder the one loader reads (a full mvlm checkpoint, or a
HuggingFace LLaVA, official LLaVA, Mipha or XTuner folder), which training continues (its tokenizer,
tower and projector), or an LLM, which training joins to `--vision_tower` through a fresh projector. The data
check asks the same question without loading any weights: which tokenizer, image processor and image
token count will training use.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import torch
from transformers import AutoConfig, BitsAndBytesConfig, PreTrainedTokenizerBase

from mvlm.data.processors import load_processors, load_tokenizer
from mvlm.errors import FlagError
from mvlm.loading.formats import detect_format
from mvlm.loading.kinds import is_full_checkpoint
from mvlm.loading.loader import load_model
from mvlm.model.builder import build_model, load_image_processor
from mvlm.model.modeling import LlavaForCausalLM
from mvlm.model.vision import load_vision_config, num_image_tokens, resolve_select_strategy, strategy_for_select_feature


@dataclasses.dataclass(frozen=True)
class TrainingStart:
    """The model flags of a training run: `--model_name_or_path`, `--vision_tower`, `--mm_vision_select_feature`."""

    model_name_or_path: str
    vision_tower: str | None = None
    select_feature: str = "patch"

    @property
    def continues_checkpoint(self) -> bool:
        """True when `model_name_or_path` is a whole vision-language model (the tower flags are then not used)."""
        return is_full_checkpoint(self.model_name_or_path) or self.foreign_format is not None

    @property
    def foreign_format(self) -> str | None:
        """The format of a foreign folder (`mvlm.loading.formats`), None for anything else."""
        return detect_format(self.model_name_or_path) if os.path.isdir(self.model_name_or_path) else None

    @property
    def select_strategy(self) -> str | None:
        return strategy_for_select_feature(self.select_feature)

    def describe(self) -> str:
        return self.model_name_or_path + ("" if self.continues_checkpoint else f" + {self.vision_tower}")

    def require_tower(self) -> str:
        if self.vision_tower is None:
            raise FlagError(f"{self.model_name_or_path} is not an mvlm checkpoint, so --vision_tower is needed "
                            "to build a model from it")
        return self.vision_tower


@dataclasses.dataclass(frozen=True)
class TrainingProcessors:
    """What the data pipeline of a run will use: tokenizer, image processor, and tokens per image (one view)."""

    tokenizer: PreTrainedTokenizerBase
    image_processor: Any
    num_image_tokens: int


def training_processors(start: TrainingStart) -> TrainingProcessors:
    """The tokenizer, image processor and image token count training will use; without loading weights, except
    for a foreign folder, whose model is assembled to be sure (the counts follow from how it is read)."""
    if start.foreign_format is not None:
        loaded = load_model(start.model_name_or_path)
        return TrainingProcessors(loaded.tokenizer, loaded.image_processor, loaded.model.num_image_tokens)
    if start.continues_checkpoint:
        tokenizer, image_processor = load_processors(start.model_name_or_path)
        config = AutoConfig.from_pretrained(start.model_name_or_path)
        count = num_image_tokens(config.vision_config, config.vision_feature_select_strategy)
        return TrainingProcessors(tokenizer, image_processor, count)
    tower = start.require_tower()
    vision_config = load_vision_config(tower)
    count = num_image_tokens(vision_config, resolve_select_strategy(vision_config, start.select_strategy))
    return TrainingProcessors(load_tokenizer(start.model_name_or_path), load_image_processor(tower, vision_config), count)


def load_training_model(
    start: TrainingStart,
    *,
    dtype: torch.dtype,
    attn_implementation: str,
    quantization: BitsAndBytesConfig | None,
    device_map: dict | None,
    projector_type: str = "mlp2x_gelu",
    vision_feature_layer: int | list[int] = -2,
) -> tuple[LlavaForCausalLM, PreTrainedTokenizerBase, Any]:
    """(model, tokenizer, image_processor) to train: the checkpoint to continue, or a fresh build."""
    if start.continues_checkpoint:
        loaded = load_model(start.model_name_or_path, device=None, device_map=device_map, torch_dtype=dtype,
                            attn_implementation=attn_implementation, quantization=quantization)
        return loaded.model, loaded.tokenizer, loaded.image_processor
    return build_model(
        start.model_name_or_path,
        start.require_tower(),
        projector_type=projector_type,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=start.select_strategy,
        torch_dtype=dtype,
        attn_implementation=attn_implementation,
        quantization_config=quantization,
        device_map=device_map,
    )
