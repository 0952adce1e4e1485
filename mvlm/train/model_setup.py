"""Build (or continue) the model a training run starts from, as the flags say."""

from __future__ import annotations

import functools
import logging
from typing import Any

import torch
from peft import prepare_model_for_kbit_training
from torch import nn
from transformers import BitsAndBytesConfig, PreTrainedTokenizerBase
from transformers.utils import is_flash_attn_2_available

from mvlm.errors import FlagError
from mvlm.loading.training_start import TrainingStart, load_training_model
from mvlm.model.builder import quantization_config
from mvlm.model.lora import add_lora
from mvlm.model.packed_attention import PACKED_ATTENTIONS, use_packed_attention
from mvlm.model.projector_weights import load_projector_weights
from mvlm.train.arguments import DataArguments, ModelArguments, TrainingArguments
from mvlm.train.policy import TrainingPolicy

logger = logging.getLogger(__name__)


def training_dtype(training_args: TrainingArguments) -> torch.dtype:
    if training_args.bf16:
        return torch.bfloat16
    if training_args.fp16:
        return torch.float16
    return torch.float32


def default_attn_implementation(requested: str | None) -> str:
    """The asked-for attention, else the best available: flash-attention 2 on a GPU where it is installed,
    else SDPA. Asking for flash-attention where it cannot run falls back to SDPA with one warning, so a
    GPU recipe also runs on a laptop."""
    if requested not in (None, "flash_attention_2"):
        return requested
    if is_flash_attn_2_available():
        return "flash_attention_2"
    if requested == "flash_attention_2" or torch.cuda.is_available():
        _warn_once("flash-attention 2 cannot run here (it needs a CUDA GPU and `pip install mvlm[gpu]`); "
                   "using SDPA attention")
    return "sdpa"


@functools.lru_cache(maxsize=None)
def _warn_once(message: str) -> None:
    logger.warning(message)


def qlora_config(training_args: TrainingArguments, policy: TrainingPolicy) -> BitsAndBytesConfig | None:
    """`--bits 4|8`: the LLM is loaded quantized (tower, projector and head stay as they are) for QLoRA."""
    if training_args.bits == 16:
        return None
    if policy.language_model.mode != "lora":
        raise FlagError(f"--bits {training_args.bits} quantizes the LLM, whose weights then cannot train; "
                         "add --lora_enable True (QLoRA) or drop --bits")
    return quantization_config(training_args.bits, training_dtype(training_args), training_args.double_quant,
                               training_args.quant_type)


def load_model_for_training(
    model_args: ModelArguments, data_args: DataArguments, training_args: TrainingArguments, policy: TrainingPolicy
) -> tuple[nn.Module, PreTrainedTokenizerBase, Any]:
    """A fresh model from an LLM + tower, or an mvlm checkpoint to continue; the stage-1 projector if given;
    quantized and wrapped with LoRA adapters when the policy says so."""
    dtype = training_dtype(training_args)
    requested = model_args.attn_implementation
    if requested in PACKED_ATTENTIONS and not data_args.packing:
        raise FlagError(f"--attn_implementation {requested} attends within packed rows; add --packing True, or "
                         "pick flash_attention_2, sdpa or eager")
    attention = default_attn_implementation(None if requested in PACKED_ATTENTIONS else requested)
    quantization = qlora_config(training_args, policy)
    device_map = {"": training_args.device} if quantization is not None else None
    start = TrainingStart(model_args.model_name_or_path, model_args.vision_tower, model_args.mm_vision_select_feature)
    model, tokenizer, image_processor = load_training_model(
        start,
        dtype=dtype,
        attn_implementation=attention,
        quantization=quantization,
        device_map=device_map,
        projector_type=model_args.mm_projector_type,
        vision_feature_layer=model_args.vision_feature_layer,
    )
    if data_args.packing:  # the language model only: the tower sees whole images, never packed rows
        use_packed_attention(model, requested if requested in PACKED_ATTENTIONS else None, training_args.device)
    if model_args.pretrain_mm_mlp_adapter:
        load_projector_weights(model, model_args.pretrain_mm_mlp_adapter)
    tokenizer.model_max_length = training_args.model_max_length
    model.config.conv_mode = model_args.conv_mode
    model.config.image_aspect_ratio = data_args.image_aspect_ratio
    model.config.image_grid_pinpoints = data_args.image_grid_pinpoints
    model.config.use_cache = False
    model.config.fused_loss = training_args.fused_loss
    if quantization is not None:
        model = prepare_model_for_kbit_training(
            model, use_gradient_checkpointing=training_args.gradient_checkpointing,
            gradient_checkpointing_kwargs=training_args.gradient_checkpointing_kwargs,
        )
    if policy.uses_lora:
        model = add_lora(model, policy.lora_parts, training_args.lora_r, training_args.lora_alpha,
                         training_args.lora_dropout, training_args.lora_bias)
    return model, tokenizer, image_processor
