"""Loading HuggingFace LLaVA, official LLaVA, Mipha and XTuner folders (built from tiny random parts as
those projects lay them out, see tests/helpers/foreign_formats.py): same logits (atol 1e-4) and greedy tokens as the
model they hold, decided by config and files, and `python -m mvlm.convert.to_mvlm` on them."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionModel,
    LlavaConfig,
    LlavaForConditionalGeneration,
    SiglipVisionConfig,
    SiglipVisionModel,
)

from mvlm.data.check import load_length_check
from mvlm.loading import load_pretrained_model
from mvlm.loading.formats import detect_format
from mvlm.model.builder import build_model
from mvlm.model.modeling import LlavaForCausalLM
from mvlm.train.train import main as train_main
from tests.helpers import foreign_formats, synthetic
from tests.helpers.batches import make_batch
from tests.helpers.training import common_flags

ATOL = 1e-4


def outputs(model, tokenizer):
    """Logits and 4 greedy tokens on a fixed image + prompt."""
    torch.manual_seed(0)
    input_ids, _, pixel_values = make_batch(model, tokenizer)
    model.eval()
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
    tokens = model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=4, do_sample=False)
    return logits, tokens


def assert_same_model(loaded, tokenizer, reference, reference_tokenizer):
    assert loaded.config.image_token_id == reference.config.image_token_id
    assert len(tokenizer) == len(reference_tokenizer)
    logits, tokens = outputs(loaded, tokenizer)
    expected_logits, expected_tokens = outputs(reference, reference_tokenizer)
    assert torch.allclose(logits, expected_logits, atol=ATOL), (logits - expected_logits).abs().max()
    assert torch.equal(tokens, expected_tokens)


def reference_model(checkpoints, family, tower, **kwargs):
    """An mvlm model of the tiny parts with a projector strong enough to move the logits."""
    torch.manual_seed(3)
    model, tokenizer, image_processor = build_model(checkpoints("llm", family), checkpoints("tower", tower), **kwargs)
    with torch.no_grad():
        for parameter in model.multi_modal_projector.parameters():
            parameter.normal_(std=0.5)
    return model.eval(), tokenizer, image_processor


# --- HuggingFace LLaVA -------------------------------------------------------------------------------------

def _hf_layout_4x(key):  # transformers 4.x: language_model.model.*, vision_tower.vision_model.*
    return key.replace("vision_tower.", "vision_tower.vision_model.", 1) if key.startswith("vision_tower.") else key


def _hf_layout_5x(key):  # transformers 5.x in-memory names: model.language_model.*, model.vision_tower.*, lm_head
    for old, new in (("language_model.model.", "model.language_model."), ("language_model.lm_head.", "lm_head."),
                     ("vision_tower.", "model.vision_tower."), ("multi_modal_projector.", "model.multi_modal_projector.")):
        if key.startswith(old):
            return new + key[len(old):]
    return key


@pytest.mark.parametrize("layout", [_hf_layout_4x, _hf_layout_5x])
def test_hf_llava_loads_with_transformers_logits(checkpoints, tmp_path, layout):
    """The reference is transformers' own LlavaForConditionalGeneration on the same weights."""
    from transformers import AutoTokenizer, CLIPImageProcessor, LlavaProcessor

    tokenizer = AutoTokenizer.from_pretrained(checkpoints("llm", "llama"))
    from mvlm.data.processors import add_image_token
    image_token = add_image_token(tokenizer)
    vision = CLIPVisionModel.from_pretrained(checkpoints("tower", "clip")).config
    text = AutoModelForCausalLM.from_pretrained(checkpoints("llm", "llama")).config
    text.vocab_size = len(tokenizer)
    torch.manual_seed(1)
    hf = LlavaForConditionalGeneration(LlavaConfig(text_config=text, vision_config=vision, image_token_index=image_token,
                                                   image_seq_length=4)).eval()
    folder = str(tmp_path / "llava-hf")
    hf.save_pretrained(folder)
    weights = os.path.join(folder, "model.safetensors")
    save_file({layout(key): value for key, value in load_file(weights).items()}, weights, metadata={"format": "pt"})
    LlavaProcessor(image_processor=CLIPImageProcessor.from_pretrained(checkpoints("tower", "clip")),
                   tokenizer=tokenizer, patch_size=14, vision_feature_select_strategy="default",
                   num_additional_image_tokens=1).save_pretrained(folder)
    assert detect_format(folder) == "hf_llava"
    loaded_tokenizer, model, image_processor, _ = load_pretrained_model(folder)
    assert model.config.image_token_id == image_token and model.config.image_aspect_ratio == "square"
    torch.manual_seed(0)
    input_ids, _, pixel_values = make_batch(model, loaded_tokenizer)
    with torch.no_grad():
        expected = hf(input_ids=input_ids, pixel_values=pixel_values).logits
        actual = model(input_ids=input_ids, pixel_values=pixel_values).logits
    assert torch.allclose(actual, expected, atol=ATOL)
    expected_tokens = hf.generate(input_ids=input_ids, pixel_values=pixel_values, max_new_tokens=4, do_sample=False)
    assert torch.equal(model.generate(input_ids, pixel_values=pixel_values, max_new_tokens=4, do_sample=False),
                       expected_tokens[:, input_ids.shape[1]:])


# --- official LLaVA ----------------------------------------------------------------------------------------

def test_official_llava_with_tower_from_mm_vision_tower(checkpoints, tmp_path):
    reference, reference_tokenizer, _ = reference_model(checkpoints, "llama", "clip")
    folder = foreign_formats.write_official_llava(
        str(tmp_path / "llava-v1.5"), checkpoints("llm", "llama"), checkpoints("tower", "clip"), reference,
        mm_vision_tower=checkpoints("tower", "clip"), as_bin=True)
    assert detect_format(folder) == "llava"
    tokenizer, model, image_processor, _ = load_pretrained_model(folder)
    assert "<image>" in tokenizer.get_vocab()  # LLaVA's -200 sentinel became a real token
    assert model.config.image_aspect_ratio == "pad" and model.config.vision_feature_select_strategy == "default"
    assert model.config.conv_mode is None  # LLaVA's folder does not say; the user tells (--conv-mode)
    assert_same_model(model, tokenizer, reference, reference_tokenizer)


def test_official_llava_with_tower_inside_and_vision_tower_override(checkpoints, tmp_path, monkeypatch):
    """`unfreeze_mm_vision_tower`: the tower's weights come from the checkpoint; its config from
    mm_vision_tower, a hub id that cannot be reached offline unless --vision-tower names a local copy."""
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_OFFLINE", True)
    reference, reference_tokenizer, _ = reference_model(checkpoints, "llama", "clip")
    with torch.no_grad():
        for parameter in reference.vision_tower.parameters():
            parameter.add_(0.05)
    trained_tower = {key: value.clone() for key, value in reference.vision_tower.state_dict().items()}
    folder = foreign_formats.write_official_llava(
        str(tmp_path / "llava-phi-3-mini"), checkpoints("llm", "llama"), checkpoints("tower", "clip"), reference,
        mm_vision_tower="openai/clip-vit-large-patch14-336", tower_tensors=trained_tower)
    with pytest.raises(ValueError, match="pass --vision-tower PATH"):
        load_pretrained_model(folder)
    tokenizer, model, _, _ = load_pretrained_model(folder, vision_tower=checkpoints("tower", "clip"))
    assert_same_model(model, tokenizer, reference, reference_tokenizer)


def test_official_llava_features_mvlm_lacks_are_refused(checkpoints, tmp_path):
    reference, _, _ = reference_model(checkpoints, "llama", "clip")
    folder = foreign_formats.write_official_llava(
        str(tmp_path / "llava"), checkpoints("llm", "llama"), checkpoints("tower", "clip"), reference,
        mm_vision_tower=checkpoints("tower", "clip"))
    config_path = os.path.join(folder, "config.json")
    config = json.load(open(config_path))
    config.update(mm_use_im_start_end=True, mm_patch_merge_type="spatial_unpad")
    json.dump(config, open(config_path, "w"))
    with pytest.raises(ValueError, match="im_start.*LLaVA-NeXT"):
        load_pretrained_model(folder)
    stage1 = str(tmp_path / "llava-pretrain")  # LLaVA's stage 1 writes config.json + mm_projector.bin only
    os.makedirs(stage1)
    json.dump({**config, "mm_use_im_start_end": False, "mm_patch_merge_type": "flat"},
              open(os.path.join(stage1, "config.json"), "w"))
    torch.save(foreign_formats.llava_projector_tensors(reference, "model.mm_projector."),
               os.path.join(stage1, "mm_projector.bin"))
    with pytest.raises(ValueError, match="--pretrain_mm_mlp_adapter"):
        load_pretrained_model(stage1)


# --- Mipha / LLaVA-Phi ---------------------------------------------------------------------------------------

def test_mipha_phi2_with_siglip_inside(checkpoints, tmp_path):
    reference, reference_tokenizer, _ = reference_model(checkpoints, "phi", "siglip")
    assert reference.language_model.lm_head.bias is not None  # Phi-2's biased head survives the import
    tower_config = SiglipVisionConfig.from_pretrained(checkpoints("tower", "siglip"))
    tower_config.vision_use_head = True
    torch.manual_seed(2)
    head = {key: value for key, value in SiglipVisionModel(tower_config).state_dict().items() if key.startswith("head.")}
    assert head
    folder = foreign_formats.write_mipha(str(tmp_path / "Mipha-3B"), checkpoints("llm", "phi"),
                                         checkpoints("tower", "siglip"), reference, "mipha_phi", head)
    assert detect_format(folder) == "mipha"
    tokenizer, model, _, _ = load_pretrained_model(folder)
    assert model.config.vision_config.model_type == "siglip_vision_model"
    assert model.config.vision_feature_select_strategy == "full" and model.config.conv_mode == "phi"
    assert_same_model(model, tokenizer, reference, reference_tokenizer)


# --- XTuner ----------------------------------------------------------------------------------------------------

def test_xtuner_full_llm_and_visual_encoder(checkpoints, tmp_path):
    reference, reference_tokenizer, _ = reference_model(checkpoints, "phi3", "clip")
    folder = foreign_formats.write_xtuner_full(str(tmp_path / "iter_xtuner"), checkpoints("llm", "phi3"),
                                               checkpoints("tower", "clip"), reference)
    assert detect_format(folder) == "xtuner"
    tokenizer, model, _, _ = load_pretrained_model(folder)
    assert model.config.vision_feature_layer == -2 and model.config.image_aspect_ratio == "pad"
    assert_same_model(model, tokenizer, reference, reference_tokenizer)


def _add_lora(module, targets, seed):
    from peft import LoraConfig, get_peft_model

    wrapped = get_peft_model(module, LoraConfig(r=4, lora_alpha=8, target_modules=targets))
    torch.manual_seed(seed)
    with torch.no_grad():
        for name, parameter in wrapped.named_parameters():
            if "lora_B" in name:
                parameter.normal_(std=0.1)  # B starts at zero: without this the adapters would change nothing
    return wrapped


def test_xtuner_lora_adapters_over_base_llm_and_tower(checkpoints, tmp_path):
    """llm_adapter/ + visual_encoder_adapter/ + projector/ only; the LLM is --model-base, the tower
    --vision-tower. The reference runs the adapters unmerged."""
    base, _, _ = reference_model(checkpoints, "llama", "clip")
    llm = _add_lora(AutoModelForCausalLM.from_pretrained(checkpoints("llm", "llama")), ["q_proj", "v_proj", "down_proj"], 4)
    tower = _add_lora(CLIPVisionModel.from_pretrained(checkpoints("tower", "clip")), ["q_proj", "fc1"], 5)
    folder = str(tmp_path / "xtuner-lora")
    foreign_formats.save_peft_adapter(llm, os.path.join(folder, "llm_adapter"))
    foreign_formats.save_peft_adapter(tower, os.path.join(folder, "visual_encoder_adapter"), tower_keys_as_4x=True)
    foreign_formats.write_xtuner_projector(folder, base)
    with pytest.raises(ValueError, match="pass the tower it was trained with as --vision-tower"):
        load_pretrained_model(folder, model_base=checkpoints("llm", "llama"))
    tokenizer, model, _, _ = load_pretrained_model(folder, model_base=checkpoints("llm", "llama"),
                                                   vision_tower=checkpoints("tower", "clip"))
    assert not any("lora_" in name for name, _ in model.named_parameters())
    adapters = [{key: value.clone() for key, value in part.state_dict().items() if "lora_" in key} for part in (llm, tower)]
    unmerged = LlavaForCausalLM(base.config, vision_tower=tower.base_model.model, language_model=llm.base_model.model)
    for part, saved in zip((llm, tower), adapters):  # the new model's post_init re-initialised the adapters
        part.load_state_dict(saved, strict=False)
    unmerged.multi_modal_projector.load_state_dict(base.multi_modal_projector.state_dict())
    from mvlm.model.builder import resize_embeddings
    resize_embeddings(unmerged, len(tokenizer))
    assert_same_model(model, tokenizer, unmerged.eval(), tokenizer)


# --- to_mvlm ---------------------------------------------------------------------------------------------------

def test_to_mvlm_cli_writes_a_checkpoint_with_the_same_logits(checkpoints, tmp_path):
    reference, reference_tokenizer, _ = reference_model(checkpoints, "llama", "clip")
    folder = foreign_formats.write_official_llava(
        str(tmp_path / "llava"), checkpoints("llm", "llama"), checkpoints("tower", "clip"), reference,
        mm_vision_tower="openai/clip-vit-large-patch14-336")
    out = str(tmp_path / "mvlm")
    command = [sys.executable, "-m", "mvlm.convert.to_mvlm", "--model-path", folder, "--save-path", out,
               "--vision-tower", checkpoints("tower", "clip"), "--conv-mode", "llava_v1"]
    result = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert result.returncode == 0, result.stderr[-2000:]
    with open(os.path.join(out, "config.json")) as handle:
        saved = json.load(handle)
    assert saved["model_type"] == "mvlm_llava" and saved["conv_mode"] == "llava_v1"
    assert saved["mm_vision_tower"] == checkpoints("tower", "clip")
    tokenizer, model, _, _ = load_pretrained_model(out)
    assert_same_model(model, tokenizer, reference, reference_tokenizer)
    again = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert again.returncode != 0 and "exists and is not an empty folder" in again.stderr


def test_training_continues_from_a_foreign_folder(checkpoints, tmp_path):
    """`--model_name_or_path` takes any folder the loader reads: an official LLaVA folder trains on as the
    model it holds (its tower, projector and LLM), and the data check counts its image tokens."""
    reference, _, _ = reference_model(checkpoints, "llama", "clip")
    folder = foreign_formats.write_official_llava(
        str(tmp_path / "llava"), checkpoints("llm", "llama"), checkpoints("tower", "clip"), reference,
        mm_vision_tower=checkpoints("tower", "clip"))
    length_check, note = load_length_check(folder, None, "patch")
    assert length_check.num_image_tokens == reference.num_image_tokens and "tokens per image" in note
    data_folder = str(tmp_path / "data")
    data_path = synthetic.write_dataset(data_folder, 8, seed=1, kind="qa")
    out = str(tmp_path / "out")
    train_main(common_flags(checkpoints, data_path, data_folder, out, "--version", "v1", "--max_steps", "1",
                            "--learning_rate", "0", "--weight_decay", "0", "--model_name_or_path", folder))
    _, trained, _, _ = load_pretrained_model(out)
    expected = {key: value for key, value in reference.state_dict().items()}
    got = trained.state_dict()
    assert got.keys() == expected.keys()
    assert all(torch.equal(got[key], expected[key]) for key in expected)  # the folder's weights, not a fresh build
