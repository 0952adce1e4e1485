"""LoRA and QLoRA training through the real entry point: what trains, what a checkpoint holds, loading
over the base model, and resuming."""

import json
import os
import shutil

import pytest
import torch
from safetensors.torch import load_file

from mvlm.loading import load_pretrained_model

from mvlm.model.builder import build_model, save_checkpoint
from mvlm.model.lora import ADAPTER_FILE, NON_LORA_FILE
from mvlm.train.train import main
from tests.helpers.batches import bare, logits_of
from tests.helpers.training import LORA, common_flags, initial_state

def base_weights_unchanged(before, model):
    """Every weight the bare model had before (adapters aside) that did not train is bit-identical."""
    state = {key.replace("base_layer.", ""): value for key, value in bare(model).state_dict().items()
             if "lora_" not in key}
    return {name.split(".")[0]: torch.equal(state[name], before[name])
            for name in before if not name.startswith("multi_modal_projector")}


@pytest.fixture(scope="module")
def lora_run(checkpoints, data, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("lora"))
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], out, *LORA,
                                "--max_steps", "4", "--save_steps", "2"))
    return out, trainer


def test_lora_trains_adapters_on_llm_linears_and_the_projector(checkpoints, lora_run):
    out, trainer = lora_run
    trainable = [name for name, p in trainer.model.named_parameters() if p.requires_grad]
    adapters = [name for name in trainable if "lora_" in name]
    assert adapters and all(".language_model." in name for name in adapters)
    assert not any("lm_head" in name for name in adapters)
    # Every linear layer of every decoder block carries an adapter (LLaVA's all-linear choice).
    wrapped = {name.split(".lora_")[0].split("layers.0.")[-1] for name in adapters if "layers.0." in name}
    assert wrapped == {"self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                       "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"}
    assert sorted(name for name in trainable if "lora_" not in name) == [
        f"base_model.model.multi_modal_projector.linear_{i}.{kind}" for i in (1, 2) for kind in ("bias", "weight")]
    learning_rates = {group["initial_lr"] for group in trainer.optimizer.param_groups for p in group["params"]
                      if p is bare(trainer.model).multi_modal_projector.linear_1.weight}
    assert learning_rates == {1e-3}  # --mm_projector_lr
    assert base_weights_unchanged(initial_state(checkpoints), trainer.model) == {
        "vision_tower": True, "language_model": True}


def test_every_lora_checkpoint_holds_adapters_and_non_lora_trainables(lora_run):
    out, trainer = lora_run
    for folder in (out, os.path.join(out, "checkpoint-2"), os.path.join(out, "checkpoint-4")):
        files = set(os.listdir(folder))
        assert {"adapter_config.json", ADAPTER_FILE, NON_LORA_FILE, "config.json", "tokenizer.json",
                "preprocessor_config.json"} <= files, folder
        assert "model.safetensors" not in files
    assert sorted(load_file(os.path.join(out, NON_LORA_FILE))) == [
        f"multi_modal_projector.linear_{i}.{kind}" for i in (1, 2) for kind in ("bias", "weight")]
    adapter_keys = load_file(os.path.join(out, ADAPTER_FILE))
    assert adapter_keys and all("lora_" in key and "language_model" in key for key in adapter_keys)


def test_lora_checkpoint_loads_over_the_base_llm_with_the_same_logits(checkpoints, lora_run):
    out, trainer = lora_run
    with pytest.raises(ValueError, match="holds LoRA adapters; pass the model it was trained from"):
        load_pretrained_model(out)
    tokenizer, model, _, _ = load_pretrained_model(out, model_base=checkpoints("llm", "llama"))
    assert not any("lora_" in name for name, _ in model.named_parameters())  # merged into plain weights
    assert model.config.conv_mode == "vicuna_v1"
    expected = logits_of(trainer.model, tokenizer)
    assert torch.allclose(logits_of(model, tokenizer), expected, atol=1e-5)
    # A changed adapter would change the logits: the comparison above can fail.
    untrained_tokenizer, untrained, _, _ = load_pretrained_model(os.path.join(out, "checkpoint-2"),
                                                                  model_base=checkpoints("llm", "llama"))
    assert not torch.allclose(logits_of(untrained, untrained_tokenizer), expected, atol=1e-3)


def test_lora_over_an_mvlm_checkpoint_loads_over_that_checkpoint(checkpoints, data, tmp_path):
    start = str(tmp_path / "start")
    model, tokenizer, image_processor = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    with torch.no_grad():
        model.multi_modal_projector.linear_1.bias.fill_(0.5)  # not what a fresh build gives
    save_checkpoint(start, model, tokenizer, image_processor)
    out = str(tmp_path / "lora")
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], out, *LORA, "--freeze_mm_mlp_adapter", "True",
                                "--model_name_or_path", start, "--max_steps", "2", "--save_strategy", "no"))
    assert not os.path.exists(os.path.join(out, NON_LORA_FILE))  # nothing but adapters trained
    tokenizer, loaded, _, _ = load_pretrained_model(out, model_base=start)
    assert torch.all(loaded.multi_modal_projector.linear_1.bias == 0.5)
    assert torch.allclose(logits_of(loaded, tokenizer), logits_of(trainer.model, tokenizer), atol=1e-5)


def test_vision_lora_adds_adapters_to_the_tower_at_its_learning_rate(checkpoints, data, tmp_path):
    out = str(tmp_path / "lora-vit")
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], out, *LORA, "--lora_vision_tower", "True",
                                "--mm_vision_tower_lr", "2e-4", "--max_steps", "2", "--save_strategy", "no"))
    tower_adapters = [p for name, p in trainer.model.named_parameters() if "lora_" in name and ".vision_tower." in name]
    assert tower_adapters
    tower_lrs = {group["initial_lr"] for group in trainer.optimizer.param_groups for p in group["params"]
                 if any(p is adapter for adapter in tower_adapters)}
    assert tower_lrs == {2e-4}
    assert base_weights_unchanged(initial_state(checkpoints), trainer.model) == {
        "vision_tower": True, "language_model": True}
    tokenizer, model, _, _ = load_pretrained_model(out, model_base=checkpoints("llm", "llama"))
    assert torch.allclose(logits_of(model, tokenizer), logits_of(trainer.model, tokenizer), atol=1e-5)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_qlora_trains_adapters_over_a_4bit_llm_and_loads_back(checkpoints, data, tmp_path):
    import bitsandbytes as bnb

    out = str(tmp_path / "qlora")
    trainer = main(common_flags(checkpoints, data["qa"], data["folder"], out, *LORA, "--bits", "4", "--lora_dropout", "0",
                                "--max_steps", "3", "--save_strategy", "no"))
    llm = bare(trainer.model).language_model
    assert isinstance(llm.model.layers[0].self_attn.q_proj.base_layer, bnb.nn.Linear4bit)
    assert not isinstance(llm.lm_head, bnb.nn.Linear4bit)
    adapters = load_file(os.path.join(out, ADAPTER_FILE))
    assert any(value.abs().sum() > 0 for key, value in adapters.items() if "lora_B" in key)  # B starts at zero
    tokenizer, model, _, _ = load_pretrained_model(out, model_base=checkpoints("llm", "llama"), load_4bit=True)
    assert torch.allclose(logits_of(model, tokenizer, train_mode=True),
                          logits_of(trainer.model, tokenizer, train_mode=True), atol=1e-4)
    with pytest.raises(SystemExit, match="add --lora_enable True"):  # a user error: one line, exit 1
        main(common_flags(checkpoints, data["qa"], data["folder"], str(tmp_path / "bad"), "--bits", "4"))


def test_lora_run_resumes_from_its_checkpoint(checkpoints, data, lora_run, tmp_path):
    """Resuming at step 2 logs the same losses for steps 3-4 and ends with the same adapters."""
    out, trainer = lora_run
    resumed_out = str(tmp_path / "resumed")
    os.makedirs(resumed_out)
    shutil.copytree(os.path.join(out, "checkpoint-2"), os.path.join(resumed_out, "checkpoint-2"))
    resumed = main(common_flags(checkpoints, data["qa"], data["folder"], resumed_out, *LORA,
                                "--max_steps", "4", "--save_steps", "2"))
    with open(os.path.join(resumed_out, "checkpoint-4", "trainer_state.json")) as handle:
        assert json.load(handle)["global_step"] == 4

    def losses(run):
        return {entry["step"]: entry["loss"] for entry in run.state.log_history if "loss" in entry}

    assert [losses(resumed)[step] for step in (3, 4)] == pytest.approx([losses(trainer)[step] for step in (3, 4)],
                                                                       abs=1e-5)
    final, again = load_file(os.path.join(out, ADAPTER_FILE)), load_file(os.path.join(resumed_out, ADAPTER_FILE))
    for key, tensor in final.items():
        assert torch.allclose(again[key], tensor, atol=1e-6), key


def test_adapters_take_the_dtype_of_the_layer_they_sit_on(checkpoints):
    """A bf16 run gets bf16 adapters: ZeRO-3 refuses trainable parameters of mixed dtypes."""
    from mvlm.model.lora import add_lora

    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"), torch_dtype=torch.bfloat16)
    wrapped = add_lora(model, ["language_model", "vision_tower"], r=4, alpha=8, dropout=0.0)
    dtypes = {p.dtype for name, p in wrapped.named_parameters() if "lora_" in name}
    assert dtypes == {torch.bfloat16}
