"""Both training stages through the real entry point and Trainer, on tiny models and synthetic data."""

import os

import pytest
import torch
from safetensors.torch import load_file

import synthetic
from mvlm.model.builder import load_pretrained_model
from mvlm.train.train import main


def common_flags(checkpoints, data_path, image_folder, output_dir, *extra):
    return [
        "--model_name_or_path", checkpoints("llm", "llama"),
        "--vision_tower", checkpoints("tower", "clip"),
        "--data_path", data_path,
        "--image_folder", image_folder,
        "--output_dir", output_dir,
        "--per_device_train_batch_size", "4",
        "--report_to", "none",
        "--logging_steps", "1",
        "--save_strategy", "steps",
        "--dataloader_num_workers", "0",
        "--use_cpu", "True",
        *extra,
    ]


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = str(tmp_path_factory.mktemp("data"))
    return {
        "folder": folder,
        "caption": synthetic.write_dataset(folder, 24, seed=1, kind="caption"),
        "qa": synthetic.write_dataset(folder, 24, seed=2, kind="qa", text_only_every=5),
    }


def test_stage1_trains_only_the_projector_and_saves_it_alone(checkpoints, data, tmp_path):
    out = str(tmp_path / "pretrain")
    main(common_flags(checkpoints, data["caption"], data["folder"], out,
                      "--version", "plain", "--tune_mm_mlp_adapter", "True", "--max_steps", "4",
                      "--save_steps", "2", "--learning_rate", "1e-2"))
    for folder in (out, os.path.join(out, "checkpoint-2"), os.path.join(out, "checkpoint-4")):
        assert os.path.isfile(os.path.join(folder, "mm_projector.safetensors")), folder
        assert not os.path.exists(os.path.join(folder, "model.safetensors")), folder
    saved = load_file(os.path.join(out, "mm_projector.safetensors"))
    assert sorted(saved) == ["multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_1.weight",
                             "multi_modal_projector.linear_2.bias", "multi_modal_projector.linear_2.weight"]


def initial_state(checkpoints, **kwargs):
    import transformers

    from mvlm.model.builder import build_model

    transformers.set_seed(42)  # as main() does with the default --seed
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"), **kwargs)
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


def changed_parts(before, model):
    """For each part: True when any of its tensors differs from `before`, with the frozen ones bit-identical."""
    changed = {}
    for name, tensor in model.state_dict().items():
        part = name.split(".")[0]
        changed.setdefault(part, False)
        if not torch.equal(tensor, before[name]):
            changed[part] = True
    return changed


def test_stage1_leaves_tower_and_llm_bit_identical(checkpoints, data, tmp_path):
    before = initial_state(checkpoints)
    trainer = main(common_flags(checkpoints, data["caption"], data["folder"], str(tmp_path / "s1"),
                                "--version", "plain", "--tune_mm_mlp_adapter", "True", "--max_steps", "3",
                                "--learning_rate", "1e-2", "--save_strategy", "no"))
    assert changed_parts(before, trainer.model) == {
        "vision_tower": False, "multi_modal_projector": True, "language_model": False}


@pytest.mark.parametrize("flags,expected", [
    ((), {"vision_tower": False, "multi_modal_projector": True, "language_model": True}),
    (("--freeze_backbone", "True"), {"vision_tower": False, "multi_modal_projector": True, "language_model": False}),
    (("--unfreeze_mm_vision_tower", "True", "--freeze_mm_mlp_adapter", "True"),
     {"vision_tower": True, "multi_modal_projector": False, "language_model": True}),
])
def test_stage2_policies_change_exactly_their_parts(checkpoints, data, tmp_path, flags, expected):
    before = initial_state(checkpoints)
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], str(tmp_path / "s2"),
                                "--version", "vicuna_v1", "--max_steps", "2", "--learning_rate", "1e-3",
                                "--save_strategy", "no", *flags))
    assert changed_parts(before, trainer.model) == expected
