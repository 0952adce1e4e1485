"""Build a fresh model from an LLM and a vision tower, save it, and load it back (LLaVA's loader signature).

What a folder holds is decided by its files, never by its name: an mvlm checkpoint is a `config.json`
with `model_type: mvlm_llava` next to safetensors weights, the tokenizer and the image processor.
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from tokenizers import AddedToken
from transformers import (
    AutoImageProcessor,
    AutoModelForCausalLM,
    AutoTokenizer,
    BitsAndBytesConfig,
    PreTrainedTokenizerBase,
)

from mvlm.constants import DEFAULT_IMAGE_TOKEN, MVLM_MODEL_TYPE
from mvlm.model.configuration import MvlmLlavaConfig
from mvlm.model.modeling import LlavaForCausalLM
from mvlm.model.projector_weights import load_projector_weights
from mvlm.model.vision import default_image_processor, load_vision_config, load_vision_tower

DEFAULT_CONTEXT_LENGTH = 2048
SAFETENSORS_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")


def add_image_token(tokenizer: PreTrainedTokenizerBase) -> int:
    """Make `<image>` a special token of `tokenizer` (kept whole, never split) and return its id."""
    if DEFAULT_IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens([AddedToken(DEFAULT_IMAGE_TOKEN, special=True, normalized=False)], special_tokens=True)
    return tokenizer.convert_tokens_to_ids(DEFAULT_IMAGE_TOKEN)


def ensure_pad_token(tokenizer: PreTrainedTokenizerBase) -> None:
    """Batches need a pad token; like LLaVA, reuse unk (or else eos) when the LLM defines none."""
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.unk_token if tokenizer.unk_token is not None else tokenizer.eos_token


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
    image_token_id = add_image_token(tokenizer)
    ensure_pad_token(tokenizer)
    load_kwargs: dict[str, Any] = {}
    if torch_dtype is not None:
        load_kwargs["dtype"] = torch_dtype
    if attn_implementation is not None:
        load_kwargs["attn_implementation"] = attn_implementation
    language_model = AutoModelForCausalLM.from_pretrained(
        llm, quantization_config=quantization_config, device_map=device_map, **load_kwargs
    )
    vision_config = load_vision_config(vision_tower)
    tower = load_vision_tower(vision_tower, vision_config, device_map=device_map, **load_kwargs)
    config = MvlmLlavaConfig(
        vision_config=tower.config,
        text_config=language_model.config,
        projector_type=projector_type,
        vision_feature_layer=vision_feature_layer,
        vision_feature_select_strategy=vision_feature_select_strategy,
        image_token_id=image_token_id,
        mm_vision_tower=vision_tower,
    )
    model = LlavaForCausalLM(config, vision_tower=tower, language_model=language_model)
    resize_embeddings(model, len(tokenizer))
    model.multi_modal_projector.to(device=model.get_input_embeddings().weight.device, dtype=torch_dtype)
    return model, tokenizer, load_image_processor(vision_tower, vision_config)


@torch.no_grad()
def resize_embeddings(model: LlavaForCausalLM, vocab_size: int) -> None:
    """Grow the LM's embeddings (and untied head) to `vocab_size`; new rows are exactly the old rows' mean.

    transformers' own mean resizing samples around the mean, which would make two builds of the same
    model differ; an exact mean keeps builds reproducible.
    """
    old_size = model.get_input_embeddings().weight.shape[0]
    if vocab_size <= old_size:
        return
    model.resize_token_embeddings(vocab_size, mean_resizing=False)
    rows = [model.get_input_embeddings().weight]
    head = model.get_output_embeddings()
    if head is not None and head.weight.data_ptr() != rows[0].data_ptr():
        rows.append(head.weight)
        if getattr(head, "bias", None) is not None:
            head.bias[old_size:] = head.bias[:old_size].mean()
    for weight in rows:
        weight[old_size:] = weight[:old_size].mean(dim=0, keepdim=True)


def save_checkpoint(
    output_dir: str, model: LlavaForCausalLM, tokenizer: PreTrainedTokenizerBase, image_processor: Any
) -> None:
    """Write everything `load_pretrained_model` needs: weights (safetensors), configs, tokenizer, processor."""
    model.save_pretrained(output_dir)
    tokenizer.save_pretrained(output_dir)
    image_processor.save_pretrained(output_dir)


def checkpoint_kind(model_path: str) -> str:
    """'full', 'lora' or 'projector', read from the files in `model_path`; a clear error otherwise."""
    if not os.path.isdir(model_path):
        raise FileNotFoundError(f"model path {model_path!r} is not a folder")
    files = set(os.listdir(model_path))
    if "adapter_config.json" in files:
        return "lora"
    if "config.json" in files and files & set(SAFETENSORS_WEIGHTS):
        with open(os.path.join(model_path, "config.json"), encoding="utf-8") as handle:
            model_type = json.load(handle).get("model_type")
        if model_type == MVLM_MODEL_TYPE:
            return "full"
        raise ValueError(
            f"{model_path} holds a {model_type!r} checkpoint, not an mvlm one; build a model from it with "
            "mvlm.model.builder.build_model(llm=..., vision_tower=...)"
        )
    if files & {"mm_projector.safetensors", "mm_projector.bin"}:
        return "projector"
    raise ValueError(
        f"{model_path} holds no mvlm checkpoint: expected config.json with safetensors weights, "
        f"adapter_config.json (LoRA) or mm_projector.safetensors; found {sorted(files) or 'nothing'}"
    )


def _quantization_config(load_8bit: bool, load_4bit: bool, compute_dtype: torch.dtype) -> BitsAndBytesConfig | None:
    """bitsandbytes config for the language model; the tower, projector and head stay unquantized."""
    if load_8bit and load_4bit:
        raise ValueError("choose one of load_8bit and load_4bit")
    skip = ["vision_tower", "multi_modal_projector", "lm_head"]
    if load_8bit:
        return BitsAndBytesConfig(load_in_8bit=True, llm_int8_skip_modules=skip)
    if load_4bit:
        return BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_compute_dtype=compute_dtype,
            bnb_4bit_use_double_quant=True,
            bnb_4bit_quant_type="nf4",
            llm_int8_skip_modules=skip,
        )
    return None


def load_pretrained_model(
    model_path: str,
    model_base: str | None = None,
    model_name: str | None = None,
    load_8bit: bool = False,
    load_4bit: bool = False,
    device_map: str | dict | None = None,
    device: str = "cpu",
    torch_dtype: torch.dtype | None = None,
    attn_implementation: str | None = None,
) -> tuple[PreTrainedTokenizerBase, LlavaForCausalLM, Any, int]:
    """LLaVA's loader: returns (tokenizer, model, image_processor, context_len).

    `model_name` is accepted for LLaVA scripts and ignored: the folder's files decide what it is.
    The default dtype is float16 on CUDA (as LLaVA) and float32 elsewhere.
    """
    del model_name
    kind = checkpoint_kind(model_path)
    dtype = torch_dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    quantization = _quantization_config(load_8bit, load_4bit, dtype)
    if quantization is not None:
        device_map = device_map or {"": device}
    if kind == "full":
        load_kwargs: dict[str, Any] = {"dtype": dtype, "quantization_config": quantization, "device_map": device_map}
        if attn_implementation is not None:
            load_kwargs["attn_implementation"] = attn_implementation
        model = LlavaForCausalLM.from_pretrained(model_path, **load_kwargs)
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        image_processor = AutoImageProcessor.from_pretrained(model_path, backend="pil")
    elif kind == "projector":
        model, tokenizer, image_processor = _load_projector_over_base(
            model_path, model_base, dtype, attn_implementation, quantization, device_map
        )
    else:
        raise ValueError(
            f"{model_path} is a {kind} checkpoint; loading it over --model-base {model_base!r} is not supported "
            "by this version of mvlm yet"
        )
    if device_map is None:
        model.to(device)
    model.eval()
    context_len = getattr(model.config.text_config, "max_position_embeddings", None) or DEFAULT_CONTEXT_LENGTH
    return tokenizer, model, image_processor, context_len


def _load_projector_over_base(
    model_path: str,
    model_base: str | None,
    dtype: torch.dtype,
    attn_implementation: str | None,
    quantization: BitsAndBytesConfig | None,
    device_map: str | dict | None,
) -> tuple[LlavaForCausalLM, PreTrainedTokenizerBase, Any]:
    """A stage-1 folder (projector + config): the LLM from `model_base`, the tower its config names."""
    if model_base is None:
        raise ValueError(f"{model_path} holds only a projector (a stage-1 checkpoint); pass the LLM it was "
                         "trained on as model_base (--model-base)")
    config = MvlmLlavaConfig.from_pretrained(model_path)
    tower = config.mm_vision_tower
    if not tower:
        raise ValueError(f"{model_path}/config.json does not say which vision tower the projector was trained on "
                         "(mm_vision_tower)")
    model, tokenizer, image_processor = build_model(
        model_base,
        tower,
        projector_type=config.projector_type,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        torch_dtype=dtype,
        attn_implementation=attn_implementation,
        quantization_config=quantization,
        device_map=device_map,
    )
    load_projector_weights(model, model_path)
    for key in ("conv_mode", "image_aspect_ratio", "image_grid_pinpoints"):
        setattr(model.config, key, getattr(config, key))
    return model, tokenizer, image_processor
