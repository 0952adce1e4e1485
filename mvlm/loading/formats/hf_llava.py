"""HuggingFace LLaVA (`llava-hf/*`, `xtuner/llava-phi-3-mini-hf`, mvlm's own export): `LlavaConfig` with
`text_config` / `vision_config`, `image_token_index`, keys `language_model.model.*` (transformers 4.x) or
`model.language_model.*` (5.x), `vision_tower.(vision_model.)*`, `multi_modal_projector.linear_{1,2}.*`.

Its layout is mvlm's own, so reading it is renaming keys; the processor's `do_pad` becomes
`image_aspect_ratio='pad'` (mvlm pads before the processor runs).
"""

from __future__ import annotations

import re
from typing import Any

from transformers import AutoImageProcessor, AutoTokenizer, LlavaConfig

from mvlm.errors import CheckpointError
from mvlm.loading.formats.common import ImportOptions, assemble, load_language_model, load_tower, read_tensors

LANGUAGE_MODEL_KEYS = {
    r"^language_model\.model\.": "model.",
    r"^model\.language_model\.": "model.",
    r"^language_model\.lm_head\.": "lm_head.",
}
TOWER_KEYS = {r"^(?:model\.)?vision_tower\.": ""}
_PROJECTOR_KEY = re.compile(r"(?:model\.)?multi_modal_projector\.(linear_[12]\.(?:weight|bias))")


def is_hf_llava(config: dict[str, Any]) -> bool:
    return config.get("model_type") == "llava" and "text_config" in config


def load(model_path: str, options: ImportOptions) -> tuple[Any, Any, Any]:
    config = LlavaConfig.from_pretrained(model_path)
    if config.projector_hidden_act != "gelu" or not config.multimodal_projector_bias:
        raise CheckpointError(
            f"{model_path}: its projector (act {config.projector_hidden_act!r}, bias "
            f"{config.multimodal_projector_bias}) is not mvlm's mlp2x_gelu; mvlm cannot load it faithfully"
        )
    language_model = load_language_model(model_path, config.text_config, options, LANGUAGE_MODEL_KEYS)
    tower = load_tower(model_path, config.vision_config, options, TOWER_KEYS)
    projector = {
        _PROJECTOR_KEY.fullmatch(key).group(1): value
        for key, value in read_tensors(model_path, lambda key: bool(_PROJECTOR_KEY.fullmatch(key))).items()
    }
    tokenizer = AutoTokenizer.from_pretrained(model_path)
    if tokenizer.convert_tokens_to_ids("<image>") != config.image_token_index:
        raise CheckpointError(
            f"{model_path}: config.json says image_token_index={config.image_token_index}, but its tokenizer maps "
            f"<image> to {tokenizer.convert_tokens_to_ids('<image>')}"
        )
    image_processor = AutoImageProcessor.from_pretrained(model_path, backend="pil")
    padded = bool(getattr(image_processor, "do_pad", False))
    if padded:
        image_processor.do_pad = False  # mvlm pads (expand2square) before the processor runs
    return assemble(
        tower,
        language_model,
        tokenizer,
        image_processor,
        projector_type="mlp2x_gelu",
        projector_weights=projector,
        source=model_path,
        vision_feature_layer=config.vision_feature_layer,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        image_aspect_ratio="pad" if padded else "square",
        mm_vision_tower=model_path,
    )
