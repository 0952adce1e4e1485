"""Build a fresh model from an LLM and a vision tower, and save it.

Reading checkpoints back (mvlm's own and the formats users come from) is `mvlm.loading`'s job.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from transformers import AutoImageProcessor, AutoModelForCausalLM, AutoTokenizer, BitsAndBytesConfig, PreTrainedTokenizerBase

from mvlm.data.processors import add_image_token, ensure_pad_token
from mvlm.errors import FlagError
from mvlm.model.configuration import MvlmLlavaConfig
from mvlm.model.modeling import LlavaForCausalLM
from mvlm.model.vision import default_image_processor, load_vision_config, load_vision_tower
from mvlm.model.zero3 import gathered

def load_image_processor(vision_tower: str, vision_config: Any) -> Any:
    """The tower checkpoint's own image processor, or the registry's default when it ships none."""
    if os.path.isdir(vision_tower) and not os.path.isfile(os.path.join(vision_tower, "preprocessor_config.json")):
        return default_image_processor(vision_config)
    return AutoImageProcessor.from_pretrained(vision_tower, backend="pil")


def build_model(
    llm: str,
    vision_tower: str,
    projector_type: str = "mlp2x_gelu",
    vision_feature_layer: int | list[int] = -2,
    vision_feature_select_strategy: str | None = None,
    torch_dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
    quantization_config: BitsAndBytesConfig | None = None,
    device_map: str | dict | None = None,
) -> tuple[LlavaForCausalLM, PreTrainedTokenizerBase, Any]:
    """A new LLaVA-style model from pretrained LLM and tower checkpoints; only the projector is fresh.

    Returns (model, tokenizer, image_processor). The tokenizer gains `<image>` (and a pad token if it had
    none); the LM's embeddings grow to match, new rows initialised to the mean of the old ones.
    """
    tokenizer = AutoTokenizer.from_pretrained(llm)
    load_kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        load_kwargs["dtype"] = torch_dtype
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    # Under ZeRO-3 loading initialises every weight before reading it, drawing random numbers; keep the
    # fresh projector below the same with or without DeepSpeed.
    with torch.random.fork_rng(devices=[]):
        language_model = AutoModelForCausalLM.from_pretrained(
            llm, quantization_config=quantization_config, device_map=device_map, **load_kwargs
        )
        vision_config = load_vision_config(vision_tower)
        tower = load_vision_tower(vision_tower, vision_config, device_map=device_map, **load_kwargs)
    model = join_parts(
        tower,
        language_model,
        tokenizer,
        projector_type=projector_type,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        mm_vision_tower=vision_tower,
    )
    model.multi_modal_projector.to(device=model.get_input_embeddings().weight.device, dtype=torch_dtype)
    return model, tokenizer, load_image_processor(vision_tower, vision_config)


def join_parts(
    tower: Any, language_model: Any, tokenizer: PreTrainedTokenizerBase, **config_fields: Any
) -> LlavaForCausalLM:
    """An mvlm model around a loaded vision tower and causal LM, with a fresh projector.

    `<image>` (and a pad token) join the tokenizer if missing and the LM's embeddings grow to match, so a
    fresh build and an imported checkpoint get the same tokenizer and embeddings. `config_fields` are the
    other MvlmLlavaConfig fields (projector_type, vision_feature_layer, ...).
    """
    image_token_id = add_image_token(tokenizer)
    ensure_pad_token(tokenizer)
    config = MvlmLlavaConfig(
        vision_config=tower.config,
        text_config=language_model.config,
        image_token_id=image_token_id,
        **config_fields,
    )
    model = LlavaForCausalLM(config, vision_tower=tower, language_model=language_model)
    resize_embeddings(model, len(tokenizer))
    return model


@torch.no_grad()
def resize_embeddings(model: LlavaForCausalLM, vocab_size: int) -> None:
    """Grow the LM's embeddings (and untied head) to `vocab_size`; new rows are exactly the old rows' mean.

    transformers' own mean resizing samples around the mean, which would make two builds of the same
    model differ; an exact mean keeps builds reproducible.
    """
    old_size = model.get_input_embeddings().num_embeddings  # not weight.shape: ZeRO-3 partitions it to (0,)
    if vocab_size <= old_size:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    if isinstance(getattr(model.language_model, "vocab_size", None), int):
        # Some LMs keep their own copy for the loss (Gemma-2 reshapes its logits by it), which resizing leaves stale.
        model.language_model.vocab_size = vocab_size
    rows = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    bias = None
    if head is not None and head.weight is not rows[0]:
        rows.append(head.weight)
        bias = getattr(head, "bias", None)
    with gathered(rows + ([bias] if bias is not None else []), modify=True):
        if bias is not None:
            bias[old_size:] = bias[:old_size].mean()
        for weight in rows:
            weight[old_size:] = weight[:old_size].mean(dim=0, keepdim=True)


def save_checkpoint(
    output_dir: str, model: LlavaForCausalLM, tokenizer: PreTrainedTokenizerBase, image_processor: Any
) -> None:
    """Write everything `mvlm.loading.load_model` needs: weights (safetensors), configs, tokenizer, processor."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)


def quantization_config(
    bits: int, compute_dtype: torch.dtype, double_quant: bool = True, quant_type: str = "nf4"
) -> BitsAndBytesConfig | None:
    """bitsandbytes config for the language model (None for 16 bits); tower, projector and head stay unquantized."""
    skip = ["vision_tower", "multi_modal_projector", "lm_head"]
    if bits == 16:
        return None
    if bits == 8:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if bits == 4:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=double_quant,
            bnb_4bit_quant_type=quant_type,
            llm_int8_skip_modules=skip,
        )
    raise FlagError(f"quantization takes 4, 8 or 16 bits, got {bits}")
