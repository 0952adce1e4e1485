"""The vision tower stops at its deepest feature layer (mvlm.model.tower_depth): the layers after it do not run
(a hook counts layer calls), the features and logits are those of the whole tower for every tower kind, the
weights past it are neither trained nor saved as trainables, and a trained checkpoint keeps every tower weight
(those past the feature layer bit for bit) and still loads in transformers' LLaVA after export."""

import os

import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import LlavaForConditionalGeneration

from mvlm.convert.to_hf import export_to_hf
from mvlm.data.images import process_images
from mvlm.loading import load_pretrained_model
from mvlm.model.builder import build_model
from mvlm.model.lora import NON_LORA_FILE, add_lora, save_lora
from mvlm.model.tower_depth import encoder_layers
from mvlm.model.vision import select_features
from mvlm.train.policy import apply_policy, parameter_groups, policy_from_flags, policy_table
from mvlm.train.train import main
from tests.helpers import synthetic
from tests.helpers import tiny

# Per tower kind (3 encoder layers each): the layer list, and what comes after the encoder.
LAYERS = {"clip": "encoder.layers", "siglip": "encoder.layers", "internvit": "encoder.layer"}
AFTER = {"clip": ("post_layernorm",), "siglip": ("post_layernorm",), "internvit": ()}  # InternViT's: Identity


def count_layer_calls(tower) -> list[int]:
    calls: list[int] = []
    for index, layer in enumerate(encoder_layers(tower)):
        layer.register_forward_hook(lambda *_, index=index: calls.append(index))
    return calls


@pytest.mark.parametrize("tower_kind", tiny.VISION_KINDS)
@pytest.mark.parametrize("layer,runs", [(-2, [0, 1]), ([-3, -1], [0, 1, 2]), (0, [0]), ([2, -4], [0, 1])])
def test_layers_past_the_feature_layer_do_not_run_and_logits_are_the_whole_towers(checkpoints, tower_kind, layer,
                                                                                  runs):
    model, tokenizer, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", tower_kind),
                                      vision_feature_layer=layer)
    model.eval()
    calls = count_layer_calls(model.vision_tower)
    pixel_values = torch.randn(2, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)
    model.get_image_features(pixel_values)  # a tower's first run is whole (transformers installs its hooks)
    calls.clear()
    features = model.get_image_features(pixel_values)
    assert calls == runs
    assert len(encoder_layers(model.vision_tower)) == 3
    assert model.vision_tower.get_submodule(LAYERS[tower_kind]) is encoder_layers(model.vision_tower)  # restored

    whole = model.vision_tower(pixel_values, output_hidden_states=True).hidden_states
    assert len(whole) == 4
    strategy = model.config.vision_feature_select_strategy
    expected = model.multi_modal_projector(select_features(whole, layer, strategy, tower_kind != "siglip"))
    assert torch.equal(features, expected)

    image_block = [model.config.image_token_id] * model.num_image_tokens
    input_ids = torch.tensor([[tokenizer.bos_token_id, *image_block, 5, *image_block, 6, 7]])
    embeddings = model.get_input_embeddings()(input_ids)
    embeddings[input_ids == model.config.image_token_id] = expected.reshape(-1, expected.shape[-1])
    with torch.no_grad():
        logits = model(input_ids=input_ids, pixel_values=pixel_values).logits
        assert torch.equal(logits, model.language_model(inputs_embeds=embeddings).logits)


def test_a_feature_layer_the_tower_lacks_is_a_clear_error(checkpoints):
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"), vision_feature_layer=-5)
    with pytest.raises(ValueError, match=r"vision_feature_layer -5 does not exist in a tower of 3 layers.*-4 \.\. 3"):
        model.get_image_features(torch.randn(1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE))


def unused_names(tower_kind: str, prefix: str = "vision_tower.") -> list[str]:
    return [f"{prefix}{LAYERS[tower_kind]}.2.", *(f"{prefix}{module}." for module in AFTER[tower_kind])]


@pytest.mark.parametrize("tower_kind", tiny.VISION_KINDS)
def test_an_unfrozen_tower_trains_only_the_layers_in_use(checkpoints, tower_kind):
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", tower_kind))
    policy = policy_from_flags(unfreeze_mm_vision_tower=True)
    apply_policy(model, policy)
    frozen = [name for name, param in model.named_parameters() if not param.requires_grad]
    assert frozen and all(name.startswith(tuple(unused_names(tower_kind))) for name in frozen)
    in_groups = {id(param) for group in parameter_groups(model, policy, 1e-3, 0.0, []) for param in group["params"]}
    assert not any(id(param) in in_groups for name, param in model.named_parameters() if name in frozen)
    table = policy_table(model, policy, 1e-3)
    assert f"vision_tower: {', '.join([LAYERS[tower_kind] + '.2', *AFTER[tower_kind]])} (" in table

    # Exactly the frozen weights get no gradient: every trainable tower weight gets one.
    model.train()
    model.get_image_features(torch.randn(1, 3, tiny.IMAGE_SIZE, tiny.IMAGE_SIZE)).sum().backward()
    for name, param in model.vision_tower.named_parameters():
        assert (param.grad is not None) == param.requires_grad, name


@pytest.mark.parametrize("lora_vision_tower", [False, True])
def test_lora_checkpoints_do_not_save_the_unused_tower_layers_as_trainables(checkpoints, tmp_path, lora_vision_tower):
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    policy = policy_from_flags(unfreeze_mm_vision_tower=True, lora_enable=True, lora_vision_tower=lora_vision_tower)
    model = add_lora(model, policy.lora_parts, r=4, alpha=8, dropout=0.0)
    apply_policy(model, policy)
    trainable = [name for name, param in model.named_parameters() if param.requires_grad]
    assert not [name for name in trainable if any(unused in name for unused in unused_names("clip"))]
    if lora_vision_tower:
        assert any("vision_tower" in name and "lora_" in name for name in trainable)
    save_lora(model, str(tmp_path))
    saved = load_file(os.path.join(tmp_path, NON_LORA_FILE))
    assert saved and not [key for key in saved if key.startswith(tuple(unused_names("clip")))]
    assert any(key.startswith("vision_tower.") for key in saved) != lora_vision_tower


def test_a_trained_checkpoint_keeps_every_tower_weight_and_loads_in_transformers_llava(checkpoints, tmp_path):
    data = synthetic.write_dataset(str(tmp_path), 8, seed=6, kind="qa")
    out = str(tmp_path / "finetune")
    main(["--model_name_or_path", checkpoints("llm", "llama"), "--vision_tower", checkpoints("tower", "clip"),
          "--data_path", data, "--image_folder", str(tmp_path), "--output_dir", out, "--version", "vicuna_v1",
          "--unfreeze_mm_vision_tower", "True", "--per_device_train_batch_size", "4", "--max_steps", "2",
          "--learning_rate", "1e-2", "--report_to", "none", "--save_strategy", "no", "--dataloader_num_workers", "0",
          "--use_cpu", "True"])
    initial, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    saved = load_file(os.path.join(out, "model.safetensors"))
    assert sorted(saved) == sorted(initial.state_dict())
    for name, tensor in initial.vision_tower.state_dict().items():
        unchanged = torch.equal(saved["vision_tower." + name], tensor)
        assert unchanged == name.startswith(tuple(unused_names("clip", prefix=""))), name

    tokenizer, model, image_processor, _ = load_pretrained_model(out)
    export_to_hf(model, tokenizer, image_processor, str(tmp_path / "hf"))
    hf, info = LlavaForConditionalGeneration.from_pretrained(str(tmp_path / "hf"), output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    pixel_values = process_images([Image.new("RGB", (40, 30), (200, 30, 30))], image_processor, "pad")
    image_block = [model.config.image_token_id] * model.num_image_tokens
    input_ids = torch.tensor([[tokenizer.bos_token_id, *image_block, 5, 6, 7]])
    with torch.no_grad():  # transformers runs the whole tower and reads the same hidden state
        assert torch.allclose(hf(input_ids=input_ids, pixel_values=pixel_values).logits,
                              model(input_ids=input_ids, pixel_values=pixel_values).logits, atol=1e-4)
