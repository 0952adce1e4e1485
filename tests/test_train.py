"""Both training stages through the real entry point and Trainer, on tiny models and synthetic data."""

import json
import os
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file

from mvlm.loading import load_pretrained_model
from mvlm.train.train import main
from tests.helpers import synthetic
from tests.helpers.training import common_flags, initial_state


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


@pytest.fixture(scope="module")
def stage1(checkpoints, data, tmp_path_factory):
    """One stage-1 run shared by the tests below: 4 steps, a checkpoint every 2."""
    out = str(tmp_path_factory.mktemp("pretrain"))
    trainer = main(common_flags(checkpoints, data["caption"], data["folder"], out,
                                "--version", "plain", "--tune_mm_mlp_adapter", "True", "--max_steps", "4",
                                "--save_steps", "2", "--learning_rate", "1e-2"))
    return out, trainer


def test_stage1_folder_loads_over_its_base_llm(checkpoints, stage1):
    out, trainer = stage1
    with pytest.raises(ValueError, match="pass the model it was trained from as model_base"):
        load_pretrained_model(out)
    _, model, image_processor, _ = load_pretrained_model(out, model_base=checkpoints("llm", "llama"))
    for name, tensor in trainer.model.multi_modal_projector.state_dict().items():
        assert torch.equal(model.multi_modal_projector.state_dict()[name], tensor), name
    assert model.config.conv_mode == "plain"


def test_stage2_from_the_stage1_projector_writes_a_full_checkpoint(checkpoints, data, stage1, tmp_path):
    pretrain_out, stage1_trainer = stage1
    out = str(tmp_path / "finetune")
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], out,
                                "--version", "vicuna_v1", "--max_steps", "2", "--save_strategy", "no",
                                "--pretrain_mm_mlp_adapter", os.path.join(pretrain_out, "mm_projector.safetensors"),
                                "--learning_rate", "0"))
    # With a zero learning rate the projector is exactly the stage-1 one.
    for name, tensor in stage1_trainer.model.multi_modal_projector.state_dict().items():
        assert torch.equal(trainer.model.multi_modal_projector.state_dict()[name], tensor), name
    tokenizer, model, image_processor, _ = load_pretrained_model(out)
    assert model.config.conv_mode == "vicuna_v1" and model.config.image_aspect_ratio == "pad"
    for name, tensor in trainer.model.state_dict().items():
        assert torch.equal(model.state_dict()[name], tensor), name
    assert os.path.isfile(os.path.join(out, "preprocessor_config.json"))


def test_llava_mm_projector_bin_is_read_with_its_key_names(checkpoints, stage1, tmp_path):
    from mvlm.model.builder import build_model
    from mvlm.model.projector_weights import load_projector_weights

    _, trainer = stage1
    projector = trainer.model.multi_modal_projector
    llava_keys = {
        "model.mm_projector.0.weight": projector.linear_1.weight, "model.mm_projector.0.bias": projector.linear_1.bias,
        "model.mm_projector.2.weight": projector.linear_2.weight, "model.mm_projector.2.bias": projector.linear_2.bias,
    }
    torch.save({key: value.detach().clone() for key, value in llava_keys.items()}, tmp_path / "mm_projector.bin")
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    load_projector_weights(model, str(tmp_path))  # the folder: finds mm_projector.bin
    for name, tensor in projector.state_dict().items():
        assert torch.equal(model.multi_modal_projector.state_dict()[name], tensor), name
    linear, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"), projector_type="linear")
    with pytest.raises(ValueError, match="check --mm_projector_type"):
        load_projector_weights(linear, str(tmp_path / "mm_projector.bin"))


def test_stage1_resumes_from_its_checkpoint(checkpoints, data, stage1, tmp_path):
    """Resuming at step 2 reaches the same projector at step 4 as the uninterrupted run."""
    import shutil

    out, trainer = stage1
    resumed_out = str(tmp_path / "resumed")
    os.makedirs(resumed_out)
    shutil.copytree(os.path.join(out, "checkpoint-2"), os.path.join(resumed_out, "checkpoint-2"))
    # Mark the logged losses of steps 1-2: a resumed run keeps them, a restarted one would recompute them.
    state_path = os.path.join(resumed_out, "checkpoint-2", "trainer_state.json")
    with open(state_path) as handle:
        state = json.load(handle)
    for entry in state["log_history"]:
        if "loss" in entry:
            entry["loss"] = 100.0 + entry["step"]
    with open(state_path, "w") as handle:
        json.dump(state, handle)
    resumed = main(common_flags(checkpoints, data["caption"], data["folder"], resumed_out,
                                "--version", "plain", "--tune_mm_mlp_adapter", "True", "--max_steps", "4",
                                "--save_steps", "2", "--learning_rate", "1e-2"))  # auto-resume: no flag needed
    assert resumed.state.global_step == 4
    def losses(run):
        return {entry["step"]: entry["loss"] for entry in run.state.log_history if "loss" in entry}

    # Steps 1-2 come from the checkpoint's state, 3-4 were trained again: the same losses as the first run.
    assert losses(resumed)[1] == 101.0 and losses(resumed)[2] == 102.0
    assert sorted(losses(resumed)) == [1, 2, 3, 4]
    assert [losses(resumed)[step] for step in (3, 4)] == pytest.approx([losses(trainer)[step] for step in (3, 4)],
                                                                       abs=1e-5)
    for name, tensor in trainer.model.multi_modal_projector.state_dict().items():
        assert torch.allclose(resumed.model.multi_modal_projector.state_dict()[name], tensor, atol=1e-6), name


def held_out_loss(model, tokenizer, image_processor, json_path, image_folder, template):
    from mvlm.data.dataset import DataConfig, LazySupervisedDataset, SupervisedCollator
    from mvlm.data.formats import load_samples

    dataset = LazySupervisedDataset(load_samples(json_path), tokenizer, image_processor,
                                    DataConfig(conv_mode=template, num_image_tokens=model.num_image_tokens,
                                               image_folder=image_folder))
    batch = SupervisedCollator(tokenizer.pad_token_id)([dataset[index] for index in range(len(dataset))])
    batch.pop("num_skipped_samples", None)
    model.eval()
    with torch.no_grad():
        return model(**batch).loss.item()


def test_two_stage_run_learns_the_synthetic_task(checkpoints, data, tmp_path):
    held_out = synthetic.write_dataset(data["folder"], 16, seed=99, kind="qa")
    pretrain, finetune = str(tmp_path / "pretrain"), str(tmp_path / "finetune")
    main(common_flags(checkpoints, data["caption"], data["folder"], pretrain,
                      "--version", "plain", "--tune_mm_mlp_adapter", "True", "--num_train_epochs", "3",
                      "--learning_rate", "1e-2", "--save_strategy", "no"))
    main(common_flags(checkpoints, data["qa"], data["folder"], finetune,
                      "--version", "vicuna_v1", "--num_train_epochs", "15", "--learning_rate", "5e-3",
                      "--pretrain_mm_mlp_adapter", pretrain, "--save_strategy", "no",
                      "--group_by_modality_length", "True"))
    from mvlm.model.builder import build_model

    untrained = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    before = held_out_loss(*untrained, held_out, data["folder"], "vicuna_v1")
    after = held_out_loss(*_loaded(finetune), held_out,
                          data["folder"], "vicuna_v1")
    assert after < 0.3 * before, (before, after)
    print(f"held-out loss: untrained {before:.3f}, after two stages {after:.3f}")


def _loaded(folder):
    tokenizer, model, image_processor, _ = load_pretrained_model(folder)
    return model, tokenizer, image_processor


def test_flash_attention_falls_back_to_sdpa_with_one_warning(checkpoints, data, tmp_path, caplog):
    from mvlm.train import model_setup

    model_setup._warn_once.cache_clear()
    flags = common_flags(checkpoints, data["qa"], data["folder"], str(tmp_path / "flash"), "--max_steps", "1",
                         "--save_strategy", "no", "--attn_implementation", "flash_attention_2")
    trainer = main(flags)
    main(flags[:-1] + ["flash_attention_2"])  # a second run in the same process: no second warning
    assert trainer.model.config.text_config._attn_implementation == "sdpa"
    warnings = [record for record in caplog.records if "flash-attention 2 cannot run here" in record.getMessage()]
    assert len(warnings) == 1 and warnings[0].levelname == "WARNING"
    assert model_setup.default_attn_implementation("eager") == "eager"


def test_llava_warmup_ratio_flag_still_works():
    import transformers

    from mvlm.train.arguments import FlagError, TrainingArguments

    parser = transformers.HfArgumentParser(TrainingArguments)
    (args,) = parser.parse_args_into_dataclasses(["--output_dir", "out", "--warmup_ratio", "0.03"])
    assert args.get_warmup_steps(1000) == 30
    with pytest.raises(FlagError, match=r"give one of --warmup_ratio \(0.03\) and --warmup_steps \(5\)"):
        parser.parse_args_into_dataclasses(["--output_dir", "out", "--warmup_ratio", "0.03", "--warmup_steps", "5"])


def test_conflicting_warmup_flags_stop_with_one_line_not_a_traceback(tmp_path):
    """Both --warmup_ratio and a non-zero --warmup_steps, as a user types them: a flag error, not a crash."""
    result = subprocess.run(
        [sys.executable, "-m", "mvlm.train.train", "--model_name_or_path", str(tmp_path / "llm"),
         "--output_dir", str(tmp_path / "out"), "--warmup_ratio", "0.03", "--warmup_steps", "5"],
        capture_output=True, text=True, timeout=300, env=dict(os.environ, CUDA_VISIBLE_DEVICES=""))
    assert result.returncode != 0 and "Traceback" not in result.stderr, result.stderr
    ours = [line for line in result.stderr.splitlines() if line.startswith("mvlm:")]
    assert ours == ["mvlm: give one of --warmup_ratio (0.03) and --warmup_steps (5), not both"], result.stderr
    assert result.stderr.rstrip().endswith(ours[0])


def test_missing_data_or_projector_files_stop_before_the_model_is_built(checkpoints, tmp_path):
    missing = str(tmp_path / "nowhere.json")
    flags = common_flags(checkpoints, missing, str(tmp_path), str(tmp_path / "out"), "--max_steps", "1")
    flags[flags.index("--model_name_or_path") + 1] = str(tmp_path / "no-such-llm")  # would fail later, differently
    with pytest.raises(SystemExit, match=f"mvlm: data file {missing} does not exist"):
        main(flags)
    (tmp_path / "data.json").write_text("[]")
    flags[flags.index("--data_path") + 1] = str(tmp_path / "data.json")
    with pytest.raises(SystemExit, match="mvlm: projector weights .*nowhere.safetensors do not exist"):
        main(flags + ["--pretrain_mm_mlp_adapter", str(tmp_path / "nowhere.safetensors")])
