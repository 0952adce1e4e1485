"""The vision tower and projector of an mvlm checkpoint, prepared for llama.cpp's legacy LLaVA image-encoder
converter (tools/mtmd/legacy-models/convert_image_encoder_to_gguf.py), which writes the mmproj GGUF that
llama.cpp's multimodal tools (mtmd, and llama-cpp-python's LLaVA chat handler) run.

That converter reads a HuggingFace vision-tower folder and the projector's weights; it keeps the tower's
layers up to the feature layer (`vision_feature_layer` in the folder's config, written here as llama.cpp's
non-negative index), drops its final norm, and names the projector `mm.0` / `mm.2`. What its format
cannot say is refused before anything is written (`mmproj_refusals`):

- towers other than CLIP and SigLIP, projectors other than `mlp2x_gelu` (llama.cpp's LLaVA projector is
  linear, GELU, linear: a `linear` projector would gain a GELU), anyres tiling, several feature layers
  (not checked against llama.cpp's stacking of them), non-square patches or images (its graph asserts
  square ones), a CLIP tower whose class token is kept (`vision_feature_select_strategy: full`: llama.cpp
  always drops it), tower activations it has no switch for.

Its only activation switch is `clip.use_gelu`, set when the config says `hidden_act: gelu`; llama.cpp's
GELU is the tanh form, so a SigLIP tower (`gelu_pytorch_tanh`) is presented to it as `gelu`, and CLIP's
`quick_gelu` stays as it is (llama.cpp's default).
"""

from __future__ import annotations

import json
import os
from typing import Any

import torch
from huggingface_hub import save_torch_state_dict

from mvlm.convert.gguf_llama_cpp import LlamaCppTree, run_converter
from mvlm.convert.to_hf import TOWER_KEY_PREFIX
from mvlm.model.vision import vision_tower_spec

TOWER_FLAGS = {"clip_vision_model": ("--clip-model-is-vision",),
               "siglip_vision_model": ("--clip-model-is-vision", "--clip-model-is-siglip")}
"""The legacy converter's flags that read each tower kind as a bare vision model."""
ACTIVATIONS = {"quick_gelu": "quick_gelu", "gelu_pytorch_tanh": "gelu", "gelu": "gelu"}
"""A tower's hidden_act -> what the converter must read to pick the same function in llama.cpp (its `gelu`
is the tanh approximation: exact for gelu_pytorch_tanh, within about 1e-3 of the erf GELU)."""
PROJECTORS = ("mlp2x_gelu",)
MMPROJ_WRITTEN = {"f16": "mmproj-model-f16.gguf", "f32": "mmproj-model-f32.gguf"}
"""The file the legacy converter writes into its output folder for each --use-f32 choice."""
CLASS_TOKEN_NOTE = (
    "llama.cpp's LLaVA graph (tools/mtmd/models/llava.cpp, at least up to the llama.cpp that llama-cpp-python "
    "0.3.36 vendors; ggml-org/llama.cpp issue 25814) appends a CLIP tower's class token after the patches while "
    "still giving positions and picking projector rows as if it came first: each patch gets its neighbour's "
    "position embedding, the first patch is dropped and the class token is fed to the LLM. The mmproj file is "
    "what llama.cpp's own converter writes for every CLIP LLaVA, but such a llama.cpp answers differently "
    "from mvlm until that is fixed; SigLIP towers have no class token and are not affected"
)


def feature_layers(model: Any) -> list[int]:
    """The checkpoint's feature layer(s) as indices into the tower's hidden states, non-negative."""
    layers = model.config.vision_feature_layer
    depth = model.config.vision_config.num_hidden_layers
    return [layer if layer >= 0 else depth + 1 + layer for layer in (layers if isinstance(layers, list) else [layers])]


def has_class_token(model: Any) -> bool:
    return vision_tower_spec(model.config.vision_config).has_cls_token


def mmproj_refusals(model: Any) -> list[str]:
    """Why llama.cpp's LLaVA mmproj format cannot hold this tower and projector (empty when it can)."""
    config = model.config
    vision = config.vision_config
    reasons = []
    if vision.model_type not in TOWER_FLAGS:
        reasons.append(f"llama.cpp's LLaVA image encoder reads CLIP and SigLIP towers, not {vision.model_type!r}")
    if config.projector_type not in PROJECTORS:
        reasons.append(f"llama.cpp's LLaVA projector is linear, GELU, linear (mlp2x_gelu), not "
                       f"{config.projector_type!r}")
    if config.image_aspect_ratio == "anyres":
        reasons.append("anyres tiling is not LLaVA-1.5's single view, the layout mvlm writes for llama.cpp")
    if isinstance(config.vision_feature_layer, list) and len(config.vision_feature_layer) > 1:
        reasons.append(f"several feature layers {config.vision_feature_layer}: llama.cpp stacks them in its own "
                       "order, which mvlm has not checked against its own")
    if vision.model_type in TOWER_FLAGS:
        if has_class_token(model) and config.vision_feature_select_strategy == "full":
            reasons.append("the class token is kept (vision_feature_select_strategy 'full'), and llama.cpp's LLaVA "
                           "graph always drops it")
        if getattr(vision, "hidden_act", None) not in ACTIVATIONS:
            reasons.append(f"the tower's activation {getattr(vision, 'hidden_act', None)!r} is none that llama.cpp's "
                           f"CLIP encoder computes ({', '.join(ACTIVATIONS)})")
        for field in ("patch_size", "image_size"):
            value = getattr(vision, field)
            if not isinstance(value, int) and len(set(value)) != 1:
                reasons.append(f"non-square {field} {value}: llama.cpp's LLaVA graph takes square ones")
    return reasons


def write_converter_input(model: Any, image_processor: Any, folder: str, name: str) -> tuple[str, str]:
    """The tower folder and the projector file the legacy converter reads, written under `folder`;
    returns (tower folder, projector file)."""
    tower_folder = os.path.join(folder, "vision_tower")
    os.makedirs(tower_folder)
    # Keys as transformers 4.x names them (the converter runs there): under the tower's `vision_model.`
    # level; float32, since the converter calls .numpy(), which bfloat16 cannot.
    prefix = TOWER_KEY_PREFIX[model.config.vision_config.model_type]
    state = {prefix + key.removeprefix("vision_model."): value.detach().to("cpu", torch.float32).contiguous()
             for key, value in model.vision_tower.state_dict().items()}
    save_torch_state_dict(state, tower_folder, metadata={"format": "pt"})
    tower_config = model.config.vision_config.to_dict()
    tower_config.update(vision_feature_layer=feature_layers(model), _name_or_path=name,
                        hidden_act=ACTIVATIONS[tower_config["hidden_act"]])
    with open(os.path.join(tower_folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(tower_config, handle, indent=2)
    # The legacy converter reads the projector only with torch.load (a pickle); it is written here, in the
    # temporary folder the conversion works in, and deleted with it. mvlm's own files stay safetensors.
    projector_path = os.path.join(folder, "projector.pt")
    projector = {f"multi_modal_projector.{key}": value.detach().to("cpu", torch.float32).contiguous()
                 for key, value in model.multi_modal_projector.state_dict().items()}
    torch.save(projector, projector_path)
    return tower_folder, projector_path


def convert_mmproj(tree: LlamaCppTree, python: str, model: Any, image_processor: Any, work: str, outtype: str,
                   name: str) -> str:
    """Run the legacy converter on the tower and projector; returns the mmproj GGUF it wrote (in `work`).
    `outtype` f32 keeps tower weights in float32 (the converter still stores its patch convolution and
    the projector's matrices in float16, as it does for every LLaVA); f16 is its default."""
    tower_folder, projector_path = write_converter_input(model, image_processor, work, name)
    output = os.path.join(work, "mmproj")
    args = ["-m", tower_folder, *TOWER_FLAGS[model.config.vision_config.model_type],
            "--llava-projector", projector_path, "--projector-type", "mlp", "--output-dir", output,
            "--image-mean", *map(str, image_processor.image_mean), "--image-std", *map(str, image_processor.image_std)]
    if outtype == "f32":
        args.append("--use-f32")
    run_converter(tree, python, tree.legacy_image_encoder, args, "the vision tower and projector")
    return os.path.join(output, MMPROJ_WRITTEN[outtype])
