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
from mvlm.model.zero3 import gathered

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
    raise ValueError(f"quantization takes 4, 8 or 16 bits, got {bits}")


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
    vision_tower: str | None = None,
) -> tuple[PreTrainedTokenizerBase, LlavaForCausalLM, Any, int]:
    """LLaVA's loader: returns (tokenizer, model, image_processor, context_len).

    `model_name` is accepted for LLaVA scripts and ignored: the folder's files decide what it is. Besides
    mvlm's own checkpoints it reads HuggingFace LLaVA, official LLaVA, Mipha / LLaVA-Phi and XTuner folders
    (mvlm.convert.formats); `vision_tower` replaces the tower such a folder names (e.g. for offline use).
    The default dtype is float16 on CUDA (as LLaVA) and float32 elsewhere.
    """
    del model_name
    from mvlm.convert.formats import ImportOptions, detect_format, load_foreign  # imports the model: only here

    foreign_format = detect_format(model_path) if os.path.isdir(model_path) else None
    kind = "foreign" if foreign_format else checkpoint_kind(model_path)
    dtype = torch_dtype or (torch.float16 if str(device).startswith("cuda") else torch.float32)
    if load_8bit and load_4bit:
        raise ValueError("choose one of load_8bit and load_4bit")
    quantization = quantization_config(8 if load_8bit else 4 if load_4bit else 16, dtype)
    if quantization is not None:
        device_map = device_map or {"": device}
    load_kwargs = _from_pretrained_kwargs(dtype, quantization, device_map, attn_implementation)
    if kind == "foreign":
        model, tokenizer, image_processor = load_foreign(
            model_path, foreign_format, ImportOptions(model_base, vision_tower, load_kwargs))
    elif kind == "full":
        model = LlavaForCausalLM.from_pretrained(model_path, **load_kwargs)
    else:
        model = _load_base_for(model_path, kind, model_base, load_kwargs)
        if kind == "projector":
            load_projector_weights(model, model_path)
        else:
            from mvlm.model.lora import apply_lora_checkpoint  # peft (and bitsandbytes) load slowly: only here

            # Merging adapters into quantized weights would round them; those stay as adapters.
            model = apply_lora_checkpoint(model, model_path, merge=quantization is None)
    if kind != "foreign":
        tokenizer = AutoTokenizer.from_pretrained(model_path)
        image_processor = AutoImageProcessor.from_pretrained(model_path, backend="pil")
    if device_map is None:
        model.to(device)
    model.eval()
    context_len = getattr(model.config.text_config, "max_position_embeddings", None) or DEFAULT_CONTEXT_LENGTH
    return tokenizer, model, image_processor, context_len


def _from_pretrained_kwargs(
    dtype: torch.dtype,
    quantization: BitsAndBytesConfig | None,
    device_map: str | dict | None,
    attn_implementation: str | None,
) -> dict[str, Any]:
    kwargs: dict[str, Any] = {"dtype": dtype, "quantization_config": quantization, "device_map": device_map}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    return kwargs


def _load_base_for(model_path: str, kind: str, model_base: str | None, load_kwargs: dict[str, Any]) -> LlavaForCausalLM:
    """The model a projector or LoRA folder was trained from: an mvlm checkpoint given as `model_base`,
    or a fresh build from the LLM `model_base` and the tower the folder's config names. Either way the
    folder's inference settings (template, aspect ratio) replace the base's."""
    if model_base is None:
        what = "only a projector (a stage-1 checkpoint)" if kind == "projector" else "LoRA adapters"
        raise ValueError(f"{model_path} holds {what}; pass the model it was trained from as model_base "
                         "(--model-base): the LLM, or the mvlm checkpoint the run started from")
    if not os.path.isfile(os.path.join(model_path, "config.json")):
        raise ValueError(f"{model_path} holds {kind} weights but no config.json (mvlm writes one next to them); "
                         "copy it from the run's output folder")
    config = MvlmLlavaConfig.from_pretrained(model_path)
    if is_full_checkpoint(model_base):
        model = LlavaForCausalLM.from_pretrained(model_base, **load_kwargs)
    elif not config.mm_vision_tower:
        raise ValueError(f"{model_path}/config.json does not say which vision tower it was trained with "
                         "(mm_vision_tower)")
    else:
        model, _, _ = build_model(
            model_base,
            config.mm_vision_tower,
            projector_type=config.projector_type,
            vision_feature_layer=config.vision_feature_layer,
            vision_feature_select_strategy=config.vision_feature_select_strategy,
            torch_dtype=load_kwargs["dtype"],
            attn_implementation=load_kwargs.get("attn_implementation"),
            quantization_config=load_kwargs["quantization_config"],
            device_map=load_kwargs["device_map"],
        )
    for key in ("conv_mode", "image_aspect_ratio", "image_grid_pinpoints"):
        setattr(model.config, key, getattr(config, key))
    return model


def is_full_checkpoint(path: str) -> bool:
    """Whether `path` is a folder holding a full mvlm checkpoint (never raises)."""
    try:
        return checkpoint_kind(path) == "full"
    except (ValueError, FileNotFoundError):
        return False
