"""build_model loads the pretrained parts; a saved checkpoint loads back identically, safetensors only."""

import json
import os

import pytest
import torch
from safetensors import safe_open
from transformers import AutoModel, AutoModelForCausalLM, CLIPModel

import mvlm
from mvlm.loading import checkpoint_kind, load_pretrained_model
from mvlm.model.builder import build_model, save_checkpoint
from tests.helpers.batches import make_batch


def saved_keys(folder):
    with safe_open(os.path.join(folder, "model.safetensors"), framework="pt") as handle:
        return list(handle.keys())


@pytest.mark.parametrize("family,tower", [("llama", "clip"), ("phi", "siglip"), ("qwen2", "internvit"),
                                          ("gemma", "clip"), ("phi3", "siglip")])
def test_save_load_round_trip(checkpoints, tmp_path, family, tower):
    model, tokenizer, image_processor = build_model(checkpoints("llm", family), checkpoints("tower", tower))
    model.config.conv_mode = "phi"
    model.eval()
    input_ids, _, pixel_values = make_batch(model, tokenizer)
    expected = model(input_ids=input_ids, pixel_values=pixel_values).logits
    folder = str(tmp_path / "ckpt")
    save_checkpoint(folder, model, tokenizer, image_processor)

    assert not [name for name in os.listdir(folder) if name.endswith((".bin", ".pt", ".pth"))]
    keys = saved_keys(folder)
    assert {key.split(".")[0] for key in keys} == {"language_model", "vision_tower", "multi_modal_projector"}
    assert {key for key in keys if key.startswith("multi_modal_projector.")} == {
        "multi_modal_projector.linear_1.weight", "multi_modal_projector.linear_1.bias",
        "multi_modal_projector.linear_2.weight", "multi_modal_projector.linear_2.bias",
    }
    assert "language_model.model.embed_tokens.weight" in keys
    with open(os.path.join(folder, "config.json"), encoding="utf-8") as handle:
        assert json.load(handle)["model_type"] == "mvlm_llava"

    loaded_tokenizer, loaded, loaded_processor, context_len = load_pretrained_model(folder)
    assert isinstance(loaded, mvlm.LlavaForCausalLM) and not loaded.training
    assert torch.allclose(loaded(input_ids=input_ids, pixel_values=pixel_values).logits, expected, atol=1e-6)
    assert loaded.config.conv_mode == "phi" and loaded.config.image_token_id == model.config.image_token_id
    assert loaded.num_image_tokens == model.num_image_tokens
    assert loaded_tokenizer.get_vocab() == tokenizer.get_vocab()
    text = "USER: <image>\nWhat is in the image? ASSISTANT: A cat.</s>"
    assert loaded_tokenizer.encode(text) == tokenizer.encode(text)
    assert loaded_tokenizer.pad_token == tokenizer.pad_token is not None
    assert loaded_processor.to_dict() == image_processor.to_dict()
    assert context_len == 512
    for name, tensor in loaded.state_dict().items():
        assert torch.equal(tensor, model.state_dict()[name]), name


def test_tied_embeddings_stay_tied_after_loading(checkpoints, tmp_path):
    model, tokenizer, image_processor = build_model(checkpoints("llm", "qwen2"), checkpoints("tower", "clip"))
    save_checkpoint(str(tmp_path), model, tokenizer, image_processor)
    _, loaded, _, _ = load_pretrained_model(str(tmp_path))
    lm = loaded.language_model
    assert lm.lm_head.weight.data_ptr() == lm.get_input_embeddings().weight.data_ptr()
    assert lm.lm_head.weight.shape[0] == len(tokenizer)


def test_auto_classes_open_mvlm_checkpoints(checkpoints, tmp_path):
    model, tokenizer, image_processor = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    save_checkpoint(str(tmp_path), model, tokenizer, image_processor)
    auto = AutoModelForCausalLM.from_pretrained(str(tmp_path))
    assert type(auto) is mvlm.LlavaForCausalLM


def test_build_model_loads_the_pretrained_llm_and_tower(checkpoints):
    llm_path, tower_path = checkpoints("llm", "phi"), checkpoints("tower", "clip")
    model, tokenizer, _ = build_model(llm_path, tower_path)
    llm = AutoModelForCausalLM.from_pretrained(llm_path)
    tower = AutoModel.from_pretrained(tower_path)
    for name, tensor in llm.state_dict().items():
        ours = model.language_model.state_dict()[name]
        if ours.shape != tensor.shape:  # embeddings and head grew by the new tokens
            ours = ours[: tensor.shape[0]]
        assert torch.equal(ours, tensor), name
    for name, tensor in tower.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], tensor), name
    assert len(tokenizer) == llm.config.vocab_size + 1  # <image>
    # New rows start at the mean of the old ones, not at random.
    embeddings = model.language_model.get_input_embeddings().weight
    assert torch.allclose(embeddings[-1], llm.get_input_embeddings().weight.mean(0), atol=1e-5)


def test_full_clip_checkpoint_gives_its_vision_half(checkpoints):
    full_path = checkpoints("full_clip", "clip")
    model, _, image_processor = build_model(checkpoints("llm", "llama"), full_path)
    clip = CLIPModel.from_pretrained(full_path)
    assert model.config.vision_config.model_type == "clip_vision_model"
    for name, tensor in clip.vision_model.state_dict().items():
        assert torch.equal(model.vision_tower.state_dict()[name], tensor), name
    assert image_processor.crop_size["height"] == 28


def test_tower_without_image_processor_gets_the_registry_default(checkpoints):
    _, _, image_processor = build_model(checkpoints("llm", "llama"), checkpoints("tower", "internvit"))
    assert list(image_processor.image_mean) == [0.485, 0.456, 0.406]
    assert image_processor.size["height"] == 28 and not image_processor.do_center_crop


def test_checkpoint_kind_reads_files_not_names(checkpoints, tmp_path):
    with pytest.raises(ValueError, match="holds a 'llama' checkpoint, not an mvlm one"):
        checkpoint_kind(checkpoints("llm", "llama"))
    empty = tmp_path / "llava-v1.5-7b"  # a LLaVA-looking name decides nothing
    empty.mkdir()
    with pytest.raises(ValueError, match="holds no mvlm checkpoint"):
        load_pretrained_model(str(empty))
    with pytest.raises(FileNotFoundError, match="is not a folder"):
        load_pretrained_model(str(tmp_path / "missing"))
    (tmp_path / "adapter_config.json").write_text("{}")
    assert checkpoint_kind(str(tmp_path)) == "lora"
    with pytest.raises(ValueError, match="holds lora weights but no config.json"):
        load_pretrained_model(str(tmp_path), model_base="base")


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_load_8bit_and_4bit_quantize_only_the_language_model(checkpoints, tmp_path):
    """LLaVA's --load-8bit / --load-4bit, through bitsandbytes (which runs on the CPU too)."""
    import bitsandbytes as bnb

    model, tokenizer, image_processor = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    model.eval()
    save_checkpoint(str(tmp_path), model, tokenizer, image_processor)
    input_ids, _, pixel_values = make_batch(model, tokenizer)
    expected = model(input_ids=input_ids, pixel_values=pixel_values).logits
    for flag, layer_type, tolerance in [("load_8bit", bnb.nn.Linear8bitLt, 0.05), ("load_4bit", bnb.nn.Linear4bit, 0.5)]:
        _, quantized, _, _ = load_pretrained_model(str(tmp_path), **{flag: True})
        assert isinstance(quantized.language_model.model.layers[0].mlp.down_proj, layer_type)
        assert type(quantized.multi_modal_projector.linear_1) is torch.nn.Linear
        assert type(quantized.language_model.lm_head) is torch.nn.Linear
        assert not any(isinstance(module, layer_type) for module in quantized.vision_tower.modules())
        logits = quantized(input_ids=input_ids, pixel_values=pixel_values).logits.float()
        assert (logits - expected).abs().mean() < tolerance * expected.abs().mean(), flag
    with pytest.raises(ValueError, match="choose one of load_8bit and load_4bit"):
        load_pretrained_model(str(tmp_path), load_8bit=True, load_4bit=True)


def test_generation_defaults_come_from_the_llm_and_survive_saving(checkpoints, tmp_path):
    import shutil

    from transformers import GenerationConfig

    llm = str(tmp_path / "llm")
    shutil.copytree(checkpoints("llm", "llama"), llm)
    GenerationConfig(bos_token_id=1, eos_token_id=[2, 7], max_length=77).save_pretrained(llm)
    model, tokenizer, image_processor = build_model(llm, checkpoints("tower", "clip"))
    assert model.generation_config.eos_token_id == [2, 7]
    save_checkpoint(str(tmp_path / "ckpt"), model, tokenizer, image_processor)
    _, loaded, _, _ = load_pretrained_model(str(tmp_path / "ckpt"))
    assert loaded.generation_config.eos_token_id == [2, 7] and loaded.generation_config.max_length == 77


def test_import_mvlm_is_light_and_the_model_api_loads_on_use(checkpoints):
    """CLI tools that need no model (scorers) start fast; `import mvlm.model` registers the Auto classes."""
    import subprocess
    import sys

    code = ("import sys, mvlm; assert 'torch' not in sys.modules, 'import mvlm pulled in torch'; "
            "from transformers import AutoConfig; import mvlm.model; "
            "assert mvlm.LlavaForCausalLM is mvlm.model.LlavaForCausalLM; "
            "assert AutoConfig.for_model('mvlm_llava').__class__ is mvlm.MvlmLlavaConfig")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
