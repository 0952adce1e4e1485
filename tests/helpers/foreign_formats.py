"""Writers of foreign checkpoint folders, laid out as each project writes them, from tiny random parts.

Each writer follows its project's own code (config fields, key names, folder layout):
- official LLaVA: `llava/model/llava_arch.py` + `multimodal_encoder/clip_encoder.py` (config.json is the
  LLM's plus `mm_*` fields; `model.mm_projector.{0,2}`; tower under `model.vision_tower.vision_tower.`),
  XTuner's `convert_xtuner_weights_to_llava.py` (`unfreeze_mm_vision_tower` with the tower inside);
- Mipha: `mipha/model/language_model/configuration_mipha.py` and `mipha_arch.py` (nested `vision_config`
  with `vision_tower` / `mm_projector` dicts; tower under `model.vision_tower.vision_model.`, SigLIP with
  its pooling head);
- XTuner: `xtuner/model/llava.py` `to_xtuner_llava` and `modules/projector` (`projector/` with a
  ProjectorConfig and keys `model.{0,2}`, `visual_encoder/`, `llm_adapter/`, `visual_encoder_adapter/`).
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from safetensors.torch import load_file, save_file

LLAVA_PROJECTOR_INDEX = {"linear_1": 0, "linear_2": 2}


def llava_projector_tensors(model, prefix: str) -> dict[str, torch.Tensor]:
    """mvlm's projector under LLaVA's Sequential names (`{prefix}0.weight`, `{prefix}2.weight`, ...)."""
    return {f"{prefix}{LLAVA_PROJECTOR_INDEX[name.split('.')[0]]}.{name.split('.')[1]}": tensor.detach().clone()
            for name, tensor in model.multi_modal_projector.state_dict().items()}


def _copy_tokenizer(llm_folder: str, folder: str) -> None:
    for name in os.listdir(llm_folder):
        if name.startswith(("tokenizer", "special_tokens")):
            shutil.copy(os.path.join(llm_folder, name), folder)


def _with_vision_model_prefix(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Tower keys as transformers 4.x (and so LLaVA, Mipha, XTuner) wrote them: under `vision_model.`."""
    return {(key if key.startswith("vision_model.") else "vision_model." + key): value for key, value in tensors.items()}


def save_bin_shards(tensors: dict[str, torch.Tensor], folder: str, shards: int = 2) -> None:
    """PyTorch .bin shards with their index, as LLaVA-1.5's published checkpoints are."""
    keys = sorted(tensors)
    weight_map = {}
    for index in range(shards):
        name = f"pytorch_model-{index + 1:05d}-of-{shards:05d}.bin"
        part = {key: tensors[key].contiguous() for key in keys[index::shards]}
        torch.save(part, os.path.join(folder, name))
        weight_map.update({key: name for key in part})
    with open(os.path.join(folder, "pytorch_model.bin.index.json"), "w") as handle:
        json.dump({"metadata": {}, "weight_map": weight_map}, handle)


def write_official_llava(folder: str, llm_folder: str, tower_folder: str, model, mm_vision_tower: str,
                         tower_tensors: dict[str, torch.Tensor] | None = None, as_bin: bool = False) -> str:
    """An official LLaVA-1.5 folder (model_type llava_llama); `tower_tensors` puts a trained tower inside."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(llm_folder, "config.json")) as handle:
        config = json.load(handle)
    config.update({
        "architectures": ["LlavaLlamaForCausalLM"], "model_type": "llava_llama", "image_aspect_ratio": "pad",
        "mm_hidden_size": model.config.vision_config.hidden_size, "mm_patch_merge_type": "flat",
        "mm_projector_lr": None, "mm_projector_type": "mlp2x_gelu", "mm_use_im_patch_token": False,
        "mm_use_im_start_end": False, "mm_vision_select_feature": "patch", "mm_vision_select_layer": -2,
        "mm_vision_tower": mm_vision_tower, "tokenizer_model_max_length": 2048, "tokenizer_padding_side": "right",
        "tune_mm_mlp_adapter": False, "freeze_mm_mlp_adapter": False, "unfreeze_mm_vision_tower": tower_tensors is not None,
        "use_mm_proj": True,
    })
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    tensors = load_file(os.path.join(llm_folder, "model.safetensors"))
    tensors.update(llava_projector_tensors(model, "model.mm_projector."))
    if tower_tensors is not None:
        tensors.update({f"model.vision_tower.vision_tower.{key}": value
                        for key, value in _with_vision_model_prefix(tower_tensors).items()})
    if as_bin:
        save_bin_shards(tensors, folder)
    else:
        save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    _copy_tokenizer(llm_folder, folder)
    return folder


def write_mipha(folder: str, llm_folder: str, tower_folder: str, model, model_type: str,
                head_tensors: dict[str, torch.Tensor]) -> str:
    """A Mipha folder: the LLM's config with the nested vision config, the tower (with SigLIP's pooling head,
    which Mipha's tower builds and mvlm does not use) and projector inside, SigLIP's preprocessor."""
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(llm_folder, "config.json")) as handle:
        config = json.load(handle)
    with open(os.path.join(tower_folder, "config.json")) as handle:
        tower_config = json.load(handle)
    tower_config.update({"model_type": "mipha_vision_model", "mm_vision_select_feature": "patch",
                         "mm_vision_select_layer": -2,
                         "vision_model_name_or_path": "./ckpts/siglip-so400m-patch14-384", "projection_dim": 512})
    config.update({
        "architectures": ["MiphaPhiForCausalLM"], "model_type": model_type, "image_aspect_ratio": "pad",
        "mm_use_im_start_end": False, "mm_use_im_patch_token": False, "tune_mm_mlp_adapter": False,
        "vision_config": {
            "vision_tower": tower_config,
            "mm_projector": {"mm_projector_type": "mlp2x_gelu", "mm_hidden_size": tower_config["hidden_size"],
                             "hidden_size": config["hidden_size"], "model_type": "mipha_projector"},
        },
    })
    with open(os.path.join(folder, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    tensors = load_file(os.path.join(llm_folder, "model.safetensors"))
    tower = _with_vision_model_prefix({**load_file(os.path.join(tower_folder, "model.safetensors")), **head_tensors})
    tensors.update({f"model.vision_tower.{key}": value for key, value in tower.items()})
    tensors.update(llava_projector_tensors(model, "model.mm_projector."))
    save_file(tensors, os.path.join(folder, "model.safetensors"), metadata={"format": "pt"})
    shutil.copy(os.path.join(tower_folder, "preprocessor_config.json"), folder)
    _copy_tokenizer(llm_folder, folder)
    return folder


def write_xtuner_projector(folder: str, model) -> None:
    """`projector/`: XTuner's ProjectorModel.save_pretrained (config with auto_map, keys model.0 / model.2)."""
    projector_folder = os.path.join(folder, "projector")
    os.makedirs(projector_folder, exist_ok=True)
    config = {
        "architectures": ["ProjectorModel"], "auto_map": {"AutoConfig": "configuration_projector.ProjectorConfig",
                                                          "AutoModel": "modeling_projector.ProjectorModel"},
        "bias": True, "depth": 2, "hidden_act": "gelu", "llm_hidden_size": model.config.text_config.hidden_size,
        "model_type": "projector", "torch_dtype": "float32", "transformers_version": "4.40.1",
        "visual_hidden_size": model.config.vision_config.hidden_size,
    }
    with open(os.path.join(projector_folder, "config.json"), "w") as handle:
        json.dump(config, handle, indent=2)
    save_file(llava_projector_tensors(model, "model."), os.path.join(projector_folder, "model.safetensors"),
              metadata={"format": "pt"})


def write_xtuner_full(folder: str, llm_folder: str, tower_folder: str, model) -> str:
    """LLM and tower trained fully: the LLM at the root, `visual_encoder/`, `projector/`."""
    shutil.copytree(llm_folder, folder)
    shutil.copytree(tower_folder, os.path.join(folder, "visual_encoder"))
    write_xtuner_projector(folder, model)
    return folder


def save_peft_adapter(peft_model, folder: str, tower_keys_as_4x: bool = False) -> None:
    """PEFT's adapter folder; with `tower_keys_as_4x`, keys carry CLIP's `vision_model.` as 4.x wrote them."""
    peft_model.save_pretrained(folder)
    if tower_keys_as_4x:
        path = os.path.join(folder, "adapter_model.safetensors")
        tensors = load_file(path)
        renamed = {key.replace("base_model.model.", "base_model.model.vision_model.", 1): value
                   for key, value in tensors.items()}
        save_file(renamed, path, metadata={"format": "pt"})
