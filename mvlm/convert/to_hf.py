"""Export an mvlm checkpoint to the HuggingFace LLaVA format, which transformers, vLLM and SGLang load.

    python -m mvlm.convert.to_hf --model-path CHECKPOINT --save-path OUT [--as-llama] [--conv-mode NAME]

OUT holds a `LlavaForConditionalGeneration` checkpoint and a `LlavaProcessor` (tokenizer with `<image>`,
an image processor that pads to squares where mvlm does, `patch_size`, `vision_feature_select_strategy`,
`num_additional_image_tokens`, and the chat template of `--conv-mode` or else the checkpoint's; without
either, a warning: chat servers refuse chat requests to a processor without a template). Keys and config
fields are written so that transformers 4.x reads them as well as 5.x: towers keep 4.x's `vision_model.`
level, the LLM's `rope_theta` / `rope_scaling` stand next to 5.x's `rope_parameters`; feature layers are
negative indices, which every version reads as mvlm does.

Where the format cannot hold the model the export is refused, with the reason, before anything is
written: HuggingFace LLaVA puts its own bias-free head over the LLM's base model, so a head with a bias
(Phi-2), soft-capped or scaled logits (Gemma-2, Granite, Cohere) would be silently lost; its projector
is `linear_1 -> act -> linear_2`, which holds `mlp2x_gelu` and `linear` (as linear_1, then an
identity) but nothing else; it has no anyres tiling.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict
from transformers import LlavaConfig, LlavaProcessor
from transformers.models.llava.image_processing_pil_llava import LlavaImageProcessorPil

from mvlm.constants import DEFAULT_IMAGE_TOKEN
from mvlm.conversation import conv_templates
from mvlm.convert.chat_template import chat_template_for
from mvlm.convert.dtypes import DTYPES, checkpoint_dtype
from mvlm.convert.output import check_new_folder, staged_folder
from mvlm.convert.phi3_to_llama import llama_config_from_phi3, split_phi3_state_dict
from mvlm.data.images import processor_input_size
from mvlm.errors import ExportError, MvlmError
from mvlm.loading import load_model
from mvlm.model.vision import vision_tower_spec

TOWER_KEY_PREFIX = {"clip_vision_model": "vision_model.", "siglip_vision_model": "vision_model.", "internvl_vision": ""}
"""What transformers 4.x puts between `vision_tower.` and a tower's weights (5.9+ reads both forms)."""
HEAD_LEVEL_FIELDS = {"final_logit_softcapping": None, "logits_scaling": 1.0, "logit_scale": 1.0}
"""LLM config fields applied by the causal-LM head, which HuggingFace LLaVA does not use, with their no-op value."""
HF_PROJECTORS = ("mlp2x_gelu", "linear")


def unrepresentable_reasons(model: Any, as_llama: bool = False) -> list[str]:
    """Why HuggingFace LLaVA cannot hold `model` exactly (empty when it can)."""
    config = model.config
    language_model = model.language_model
    text_config = config.text_config
    reasons = []
    head = language_model.get_output_embeddings()
    if getattr(head, "bias", None) is not None:
        reasons.append(f"the LLM's head has a bias ({text_config.model_type}, e.g. Phi-2), and LLaVA's head has none")
    for field, no_op in HEAD_LEVEL_FIELDS.items():
        value = getattr(text_config, field, no_op)
        if value is not None and value != no_op:
            reasons.append(f"the LLM's head applies {field}={value}, which LLaVA's own head would drop")
    if getattr(language_model, "base_model_prefix", None) != "model":
        reasons.append(f"the LLM ({text_config.model_type}) does not keep its decoder under `model.`")
    if config.projector_type not in HF_PROJECTORS:
        reasons.append(f"projector {config.projector_type!r} is none of {', '.join(HF_PROJECTORS)}")
    if config.image_aspect_ratio == "anyres":
        reasons.append("anyres tiling has no LLaVA-1.5 equivalent")
    if config.vision_config.model_type not in TOWER_KEY_PREFIX:
        reasons.append(f"vision tower {config.vision_config.model_type!r} has no known HuggingFace LLaVA layout")
    patch = config.vision_config.patch_size
    if not isinstance(patch, int) and len(set(patch)) != 1:
        reasons.append(f"non-square patches {patch} cannot be given as the processor's patch_size")
    if getattr(model, "hf_quantizer", None) is not None or getattr(language_model, "hf_quantizer", None) is not None:
        reasons.append("the model is quantized; load it without --load-4bit/8bit")
    if as_llama and text_config.model_type != "phi3":
        reasons.append(f"--as-llama splits Phi-3's fused projections; this LLM is {text_config.model_type!r}")
    return reasons


def _with_legacy_rope_fields(text_config: dict[str, Any]) -> dict[str, Any]:
    """Add 4.x's `rope_theta` / `rope_scaling` / `partial_rotary_factor` next to 5.x's `rope_parameters`:
    4.x ignores `rope_parameters` and would silently fall back to its defaults."""
    rope = text_config.get("rope_parameters")
    if not isinstance(rope, dict):
        return text_config
    text_config = dict(text_config)
    text_config.setdefault("rope_theta", rope.get("rope_theta", 10000.0))
    if "partial_rotary_factor" in rope:
        text_config.setdefault("partial_rotary_factor", rope["partial_rotary_factor"])
    scaling = {key: value for key, value in rope.items() if key not in ("rope_theta", "partial_rotary_factor")}
    if scaling.get("rope_type", "default") != "default":
        scaling.setdefault("type", scaling["rope_type"])
        text_config.setdefault("rope_scaling", scaling)
    return text_config


def negative_feature_layer(layer: int | list[int], num_layers: int) -> int | list[int]:
    """`layer` (or each of a list) as the equivalent negative index into a tower's `num_layers` + 1 hidden
    states: transformers' LLaVA reads `vision_feature_layer: 0` as "no hidden states wanted" (it is falsy)
    and then fails in get_image_features, while -(num_layers + 1) selects the same embeddings output."""
    if isinstance(layer, list):
        return [negative_feature_layer(one, num_layers) for one in layer]
    return layer - (num_layers + 1) if layer >= 0 else layer


def _projector_state(model: Any) -> tuple[dict[str, torch.Tensor], str]:
    """HuggingFace's linear_1 / act / linear_2 tensors and activation; a `linear` projector is linear_1
    followed by an exact identity (its activation `linear` is the identity function)."""
    projector = model.multi_modal_projector
    if model.config.projector_type == "mlp2x_gelu":
        return {f"multi_modal_projector.{key}": value for key, value in projector.state_dict().items()}, "gelu"
    width = projector.out_features
    return {
        "multi_modal_projector.linear_1.weight": projector.weight,
        "multi_modal_projector.linear_1.bias": projector.bias,
        "multi_modal_projector.linear_2.weight": torch.eye(width, dtype=projector.weight.dtype),
        "multi_modal_projector.linear_2.bias": torch.zeros(width, dtype=projector.weight.dtype),
    }, "linear"


def hf_llava_state_dict(model: Any, as_llama: bool = False) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """The weights under HuggingFace LLaVA's (4.x-compatible) key names, and the LLaVA config as a dict."""
    config = model.config
    text_config = config.text_config
    language_state = model.language_model.state_dict()
    if as_llama:
        language_state = split_phi3_state_dict(language_state, text_config)
        text_config = llama_config_from_phi3(text_config)
    tied = bool(getattr(text_config, "tie_word_embeddings", False))
    state = {f"language_model.{key}": value for key, value in language_state.items()
             if not (tied and key.startswith("lm_head."))}
    prefix = TOWER_KEY_PREFIX[config.vision_config.model_type]
    for key, value in model.vision_tower.state_dict().items():
        key = key[len("vision_model."):] if key.startswith("vision_model.") else key
        state[f"vision_tower.{prefix}{key}"] = value
    projector_state, activation = _projector_state(model)
    state.update(projector_state)
    llava_config = LlavaConfig(
        text_config=text_config.to_dict(),
        vision_config=config.vision_config.to_dict(),
        image_token_index=config.image_token_id,
        image_seq_length=model.num_image_tokens,
        projector_hidden_act=activation,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        vision_feature_layer=negative_feature_layer(config.vision_feature_layer,
                                                    config.vision_config.num_hidden_layers),
        multimodal_projector_bias=True,
        tie_word_embeddings=tied,
    ).to_dict()
    llava_config["architectures"] = ["LlavaForConditionalGeneration"]
    llava_config["text_config"] = _with_legacy_rope_fields(llava_config["text_config"])
    llava_config["text_config"]["architectures"] = ["LlamaForCausalLM" if as_llama else type(model.language_model).__name__]
    llava_config["text_config"]["vocab_size"] = model.get_input_embeddings().num_embeddings
    llava_config["dtype"] = llava_config["torch_dtype"] = str(next(model.parameters()).dtype).removeprefix("torch.")
    return {key: value.detach().to("cpu").contiguous() for key, value in state.items()}, llava_config


def export_conv_mode(model: Any, conv_mode: str | None = None) -> str | None:
    """The template to export: `conv_mode` where given, else the one the checkpoint records (None: none)."""
    return conv_mode or getattr(model.config, "conv_mode", None)


def llava_processor(model: Any, tokenizer: Any, image_processor: Any, conv_mode: str | None = None) -> LlavaProcessor:
    """A LlavaProcessor that expands `<image>` and prepares pixels exactly as mvlm does for this model, with
    the chat template of `conv_mode` (default: the checkpoint's)."""
    config = model.config
    height, width = processor_input_size(image_processor)
    crop = getattr(image_processor, "crop_size", None) or {"height": height, "width": width}
    pixels = LlavaImageProcessorPil(
        do_pad=config.image_aspect_ratio == "pad",
        do_resize=getattr(image_processor, "do_resize", True),
        size=dict(image_processor.size),
        resample=image_processor.resample,
        do_center_crop=bool(getattr(image_processor, "do_center_crop", False)),
        crop_size=dict(crop),
        do_rescale=getattr(image_processor, "do_rescale", True),
        rescale_factor=getattr(image_processor, "rescale_factor", 1 / 255),
        do_normalize=getattr(image_processor, "do_normalize", True),
        image_mean=list(image_processor.image_mean),
        image_std=list(image_processor.image_std),
        do_convert_rgb=True,
    )
    tokenizer = copy.deepcopy(tokenizer)
    name = export_conv_mode(model, conv_mode)
    template = chat_template_for(name, tokenizer) if name else None
    patch = config.vision_config.patch_size
    return LlavaProcessor(
        image_processor=pixels,
        tokenizer=tokenizer,
        patch_size=patch if isinstance(patch, int) else patch[0],
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=int(vision_tower_spec(config.vision_config).has_cls_token),
        image_token=DEFAULT_IMAGE_TOKEN,
        chat_template=template,
    )


def export_to_hf(
    model: Any, tokenizer: Any, image_processor: Any, save_path: str, as_llama: bool = False,
    max_shard_size: str = "5GB", conv_mode: str | None = None,
) -> str | None:
    """Write `model` as a HuggingFace LLaVA checkpoint + processor to `save_path` (a new or empty folder);
    a refusal or a failure leaves nothing behind. Returns the chat template written (None: none)."""
    reasons = unrepresentable_reasons(model, as_llama)
    if reasons:
        raise ExportError("the HuggingFace LLaVA format cannot hold this model: " + "; ".join(reasons))
    check_new_folder(save_path)
    state, config = hf_llava_state_dict(model, as_llama)
    processor = llava_processor(model, tokenizer, image_processor, conv_mode)
    with staged_folder(save_path) as staging:
        save_torch_state_dict(state, staging, max_shard_size=max_shard_size, metadata={"format": "pt"})
        with open(os.path.join(staging, "config.json"), "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, sort_keys=True)
        processor.save_pretrained(staging)
        name_tokenizer_class_for_4x(staging)
        model.generation_config.save_pretrained(staging)
    return processor.chat_template


def name_tokenizer_class_for_4x(folder: str) -> None:
    """5.x names its tokenizer.json-backed class `TokenizersBackend`, unknown to 4.x; 4.x reads the same
    tokenizer.json as `PreTrainedTokenizerFast` (which 5.x maps back to its backend)."""
    path = os.path.join(folder, "tokenizer_config.json")
    with open(path, encoding="utf-8") as handle:
        config = json.load(handle)
    if config.get("tokenizer_class") == "TokenizersBackend":
        config["tokenizer_class"] = "PreTrainedTokenizerFast"
        with open(path, "w", encoding="utf-8") as handle:
            json.dump(config, handle, indent=2, ensure_ascii=False)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model-path", "--model_path", required=True,
                        help="an mvlm checkpoint, or anything load_pretrained_model reads (LoRA with --model-base, ...)")
    parser.add_argument("--model-base", "--model_base", default=None, help="the base model of a LoRA/projector folder")
    parser.add_argument("--vision-tower", "--vision_tower", default=None, help="replace the tower a foreign folder names")
    parser.add_argument("--save-path", "--save_path", required=True, help="a new folder for the HuggingFace checkpoint")
    parser.add_argument("--as-llama", "--as_llama", action="store_true",
                        help="write a Phi-3 LLM as a Llama (fused qkv_proj/gate_up_proj split), as XTuner's converter")
    parser.add_argument("--dtype", choices=["auto", *DTYPES], default="auto",
                        help="weights' dtype; auto: the one the checkpoint records")
    parser.add_argument("--max-shard-size", "--max_shard_size", default="5GB")
    parser.add_argument("--conv-mode", "--conv_mode", default=None,
                        help="the chat template to export (one of mvlm's, as for serve.cli); default: the checkpoint's")
    args = parser.parse_args(argv)
    if args.conv_mode is not None and args.conv_mode not in conv_templates:
        raise SystemExit(f"mvlm.convert.to_hf: unknown --conv-mode {args.conv_mode!r}; known: "
                         f"{', '.join(sorted(conv_templates))}")
    try:
        dtype = checkpoint_dtype(args.model_path) if args.dtype == "auto" else DTYPES[args.dtype]
        loaded = load_model(args.model_path, args.model_base, torch_dtype=dtype, vision_tower=args.vision_tower)
        model = loaded.model
        template = export_to_hf(model, loaded.tokenizer, loaded.image_processor, args.save_path,
                                as_llama=args.as_llama, max_shard_size=args.max_shard_size, conv_mode=args.conv_mode)
    except MvlmError as error:
        raise SystemExit(f"mvlm.convert.to_hf: {args.model_path}: {error}") from None
    if template is None:
        print(f"mvlm.convert.to_hf: warning: {args.save_path} has no chat template ("
              f"{_why_no_template(export_conv_mode(model, args.conv_mode), args.model_path)}), so chat servers (vLLM, "
              "SGLang) refuse chat requests to it; export again with --conv-mode NAME, the template it was trained "
              "with", file=sys.stderr)
    print(f"wrote {args.save_path}: load it with transformers.LlavaForConditionalGeneration.from_pretrained and "
          "AutoProcessor.from_pretrained")


def _why_no_template(conv_mode: str | None, model_path: str) -> str:
    """Why an export has no chat template, for the warning."""
    if conv_mode is None:
        return f"{model_path} records no conv_mode and no --conv-mode was given"
    return f"template {conv_mode!r} is the tokenizer's own chat template, and the tokenizer has none"


if __name__ == "__main__":
    main()
