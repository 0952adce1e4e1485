"""Merging a LoRA checkpoint written by the real trainer (adapters on the LLM and the tower, the projector
as a non-LoRA trainable) with LLaVA's script interface, and extracting a projector."""

import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mvlm.convert.extract_projector import extract_projector
from mvlm.convert.merge_lora import merge_lora
from mvlm.loading import checkpoint_kind, load_pretrained_model
from mvlm.model.builder import build_model
from mvlm.model.projector_weights import load_projector_weights
from mvlm.train.train import main
from tests.helpers.batches import bare, logits_of
from tests.helpers.training import LORA, common_flags

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope="module")
def lora_run(checkpoints, data, tmp_path_factory):  # noqa: F811
    out = str(tmp_path_factory.mktemp("lora-vit"))
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], out, *LORA, "--lora_vision_tower", "True",
                                "--max_steps", "2", "--save_strategy", "no"))
    return out, trainer


@pytest.fixture(scope="module")
def merged(checkpoints, lora_run, tmp_path_factory):
    out, _ = lora_run
    merged_path = str(tmp_path_factory.mktemp("merged") / "model")
    command = [sys.executable, os.path.join(REPO, "scripts", "merge_lora_weights.py"), "--model-path", out,
               "--model-base", checkpoints("llm", "llama"), "--save-model-path", merged_path]
    result = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    return merged_path, command


def test_merged_checkpoint_gives_the_unmerged_logits(checkpoints, lora_run, merged):
    _, trainer = lora_run
    merged_path, _ = merged
    assert checkpoint_kind(merged_path) == "full"
    assert not os.path.exists(os.path.join(merged_path, "adapter_config.json"))
    tokenizer, model, _, _ = load_pretrained_model(merged_path)
    assert not any("lora_" in name for name, _ in model.named_parameters())
    assert model.config.conv_mode == "vicuna_v1"
    assert torch.allclose(logits_of(model, tokenizer), logits_of(trainer.model, tokenizer), atol=1e-4)
    trained = bare(trainer.model)
    for name, tensor in model.multi_modal_projector.state_dict().items():  # the non-LoRA trainables are kept
        assert torch.equal(tensor, trained.multi_modal_projector.state_dict()[name]), name
    base_tower = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))[0].vision_tower
    name = "encoder.layers.0.self_attn.q_proj.weight"
    assert not torch.allclose(model.vision_tower.state_dict()[name], base_tower.state_dict()[name])  # tower adapters merged


def test_merge_refuses_what_it_cannot_merge(merged, tmp_path):
    merged_path, command = merged
    again = subprocess.run(command, capture_output=True, text=True, cwd=REPO)
    assert again.returncode != 0 and "exists and is not an empty folder" in again.stderr
    with pytest.raises(ValueError, match="holds no LoRA adapters"):
        merge_lora(merged_path, None, str(tmp_path / "out"))


def test_extract_projector_writes_what_stage_2_reads(checkpoints, merged, tmp_path):
    merged_path, _ = merged
    path = extract_projector(merged_path, str(tmp_path / "stage1"))
    assert path == str(tmp_path / "stage1" / "mm_projector.safetensors")
    saved = load_file(path)
    source = load_file(os.path.join(merged_path, "model.safetensors"))
    assert sorted(saved) == [f"multi_modal_projector.linear_{i}.{kind}" for i in (1, 2) for kind in ("bias", "weight")]
    assert all(torch.equal(saved[key], source[key]) for key in saved)
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    load_projector_weights(model, path)  # what --pretrain_mm_mlp_adapter does
    assert torch.equal(model.multi_modal_projector.linear_2.weight, saved["multi_modal_projector.linear_2.weight"])
    with pytest.raises(FileExistsError):
        extract_projector(merged_path, path)
    with pytest.raises(ValueError, match="mvlm writes safetensors"):
        extract_projector(merged_path, str(tmp_path / "mm_projector.bin"))
