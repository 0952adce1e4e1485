"""scripts/pretrain.sh, finetune.sh, finetune_lora.sh, finetune_qlora.sh driven as a user drives them.

Real runs: `bash scripts/<name>.sh` in a subprocess on tiny Phi-2/SigLIP-shaped checkpoints (Mipha-3B's
pair) and synthetic data, paths overridden by flags or by environment variables, on the CPU. The three
stage-2 runs and a two-process torchrun run start together once stage 1 is done; then two "machines"
(NNODES=2) meet on this one; the file takes about 80 s, Python start-up dominates. `DRY_RUN=1` runs check
the command each script composes (recipes, launcher, many machines, global batch) against the numbers the
seeds publish, in a fraction of a second each; a fake nvidia-smi stands for a GPU machine.
"""

from __future__ import annotations

import json
import os
import shlex
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from mvlm.loading import load_pretrained_model
from tests.helpers import synthetic

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
SCRIPT_NAMES = ("pretrain.sh", "finetune.sh", "finetune_lora.sh", "finetune_qlora.sh")
# Every variable the scripts read from the environment: unset for the tests, so each starts from defaults.
SCRIPT_VARIABLES = (
    "RECIPE LAUNCHER NPROC MASTER_PORT BF16 TF32 DRY_RUN MVLM_SCRIPT MODEL_NAME_OR_PATH VISION_TOWER "
    "PROMPT_VERSION DATA_PATH IMAGE_FOLDER OUTPUT_DIR OUTPUT_SUFFIX PRETRAIN_MM_MLP_ADAPTER MM_PROJECTOR_TYPE "
    "MM_VISION_SELECT_LAYER IMAGE_ASPECT_RATIO GROUP_BY_MODALITY_LENGTH UNFREEZE_MM_VISION_TOWER "
    "MM_VISION_TOWER_LR GLOBAL_BATCH PER_DEVICE_BATCH LEARNING_RATE NUM_TRAIN_EPOCHS MODEL_MAX_LENGTH "
    "WEIGHT_DECAY WARMUP_RATIO LR_SCHEDULER_TYPE GRADIENT_CHECKPOINTING SAVE_STEPS SAVE_TOTAL_LIMIT "
    "NUM_WORKERS REPORT_TO DEEPSPEED_CONFIG LORA_R LORA_ALPHA LORA_DROPOUT MM_PROJECTOR_LR BITS QUANT_TYPE "
    "DOUBLE_QUANT HOSTFILE NNODES NODE_RANK MASTER_ADDR"
).split()


def script_env(**variables: str) -> dict[str, str]:
    """The test's environment, no GPU visible, this interpreter as PYTHON, plus `variables`."""
    env = {key: value for key, value in os.environ.items() if key not in SCRIPT_VARIABLES}
    env.update(PYTHON=sys.executable, CUDA_VISIBLE_DEVICES="", NUM_WORKERS="0")
    env.update(variables)
    return env


class ScriptRun:
    """`bash scripts/NAME ARGS` started in the background; its output goes to a log file (no pipe to fill)."""

    def __init__(self, name: str, args: list[str], env: dict[str, str], workdir: Path):
        self.log = workdir / f"{name}-{len(list(workdir.glob('*.log')))}.log"
        with open(self.log, "w") as log:
            self.process = subprocess.Popen(
                ["bash", str(SCRIPTS / name), *args], env=env, cwd=workdir, stdout=log, stderr=subprocess.STDOUT
            )

    def output(self) -> str:
        """Wait for the run; its output, after asserting that it succeeded."""
        self.process.wait(timeout=600)
        text = self.log.read_text(errors="replace")
        assert self.process.returncode == 0, text[-4000:]
        return text


def policy_table(output: str) -> dict[str, tuple[str, str]]:
    """The training-policy table the run logged: part -> (mode, learning rate as printed)."""
    lines = output.split("training policy:\n", 1)[1].splitlines()
    assert lines[0].split() == ["module", "mode", "trainable", "total", "learning", "rate"]
    return {row.split()[0]: (row.split()[1], row.split()[4]) for row in lines[1:4]}


def launched_command(output: str) -> list[str]:
    """The command line the script printed (`mvlm: ...`) before starting Python."""
    line = next(line for line in output.splitlines() if line.startswith("mvlm: ") and "mvlm.train.train" in line)
    return shlex.split(line[len("mvlm: "):])


def last_flag_values(command: list[str]) -> dict[str, str]:
    """What argparse will see: each --flag's last value (flags without a value are left out)."""
    start = command.index("mvlm.train.train") + 1
    values = {}
    for index in range(start, len(command) - 1):
        if command[index].startswith("--") and not command[index + 1].startswith("--"):
            values[command[index][2:]] = command[index + 1]
    return values


# ---------------------------------------------------------------- real runs on tiny models, on the CPU


@pytest.fixture(scope="module")
def workdir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("scripts")


@pytest.fixture(scope="module")
def data(workdir):
    folder = workdir / "data"
    return {
        "folder": str(folder),
        "caption": synthetic.write_dataset(str(folder), 24, seed=1, kind="caption"),
        "qa": synthetic.write_dataset(str(folder), 24, seed=2, kind="qa", text_only_every=5),
    }


@pytest.fixture(scope="module")
def models(checkpoints):
    """Mipha-3B's pair in miniature: a Phi-2-shaped LLM and a SigLIP tower."""
    return {"llm": checkpoints("llm", "phi"), "tower": checkpoints("tower", "siglip")}


SMALL_BATCH = {"GLOBAL_BATCH": "4", "PER_DEVICE_BATCH": "2"}  # 2 per step x 2 accumulation on one process


@pytest.fixture(scope="module")
def pretrain(workdir, data, models):
    """The brief's command: bash scripts/pretrain.sh --model_name_or_path ... --max_steps N."""
    run = ScriptRun("pretrain.sh", [
        "--model_name_or_path", models["llm"], "--vision_tower", models["tower"],
        "--data_path", data["caption"], "--image_folder", data["folder"],
        "--output_dir", "out/pretrain", "--max_steps", "3",
    ], script_env(**SMALL_BATCH), workdir)
    return workdir / "out/pretrain", run.output()


@pytest.fixture(scope="module")
def stage2(workdir, data, models, pretrain):
    """Stage-2 runs from the stage-1 projector, started together; plus stage 1 again on two processes."""
    projector = str(pretrain[0] / "mm_projector.safetensors")
    paths = ["--model_name_or_path", models["llm"], "--vision_tower", models["tower"],
             "--data_path", data["qa"], "--image_folder", data["folder"]]
    runs = {
        "finetune": ScriptRun("finetune.sh", [
            *paths, "--pretrain_mm_mlp_adapter", projector, "--output_dir", "out/finetune", "--max_steps", "3",
        ], script_env(**SMALL_BATCH), workdir),
        # Paths through the environment this time, as `DATA_PATH=... bash scripts/finetune_lora.sh` does.
        "lora": ScriptRun("finetune_lora.sh", ["--max_steps", "2"], script_env(
            **SMALL_BATCH, MODEL_NAME_OR_PATH=models["llm"], VISION_TOWER=models["tower"], DATA_PATH=data["qa"],
            IMAGE_FOLDER=data["folder"], PRETRAIN_MM_MLP_ADAPTER=projector, OUTPUT_DIR="out/lora",
        ), workdir),
        "qlora": ScriptRun("finetune_qlora.sh", [
            *paths, "--pretrain_mm_mlp_adapter", projector, "--output_dir", "out/qlora", "--max_steps", "2",
        ], script_env(**SMALL_BATCH, RECIPE="llava15"), workdir),
        "torchrun": ScriptRun("pretrain.sh", [
            "--model_name_or_path", models["llm"], "--vision_tower", models["tower"],
            "--data_path", data["caption"], "--image_folder", data["folder"],
            "--output_dir", "out/pretrain-2proc", "--max_steps", "2",
        ], script_env(**SMALL_BATCH, NPROC="2"), workdir),
    }
    return runs


def test_pretrain_trains_the_projector_with_the_mipha_stage1_recipe(pretrain):
    out, output = pretrain
    assert sorted(load_file(str(out / "mm_projector.safetensors"))) == [
        "multi_modal_projector.linear_1.bias", "multi_modal_projector.linear_1.weight",
        "multi_modal_projector.linear_2.bias", "multi_modal_projector.linear_2.weight"]
    assert not (out / "model.safetensors").exists()
    # The recipe reached the trainer: plain template, square images, only the projector at 1e-3.
    config = json.loads((out / "config.json").read_text())
    assert (config["conv_mode"], config["image_aspect_ratio"]) == ("plain", "square")
    assert policy_table(output) == {
        "vision_tower": ("frozen", "-"), "multi_modal_projector": ("full", "0.001"), "language_model": ("frozen", "-")}
    # GLOBAL_BATCH=4 with 2 per device on one process: 2 accumulation steps, so 3 steps see 12 of the
    # 24 samples (epoch 0.5; it would be 0.25 without accumulation).
    state = json.loads((out / "trainer_state.json").read_text())
    assert (state["global_step"], state["train_batch_size"], state["log_history"][-1]["epoch"]) == (3, 2, 0.5)
    # On a machine without a GPU: one plain Python process, --use_cpu, none of the GPU-only flags.
    command = launched_command(output)
    assert command[:3] == [sys.executable, "-m", "mvlm.train.train"]
    assert last_flag_values(command)["use_cpu"] == "True"
    assert not {"--bf16", "--tf32", "--deepspeed"} & set(command)


def test_finetune_from_the_stage1_projector_writes_a_checkpoint_that_loads(pretrain, stage2, workdir):
    output = stage2["finetune"].output()
    out = workdir / "out/finetune"
    _, model, _, _ = load_pretrained_model(str(out))
    # Mipha-3B's stage 2: phi template, padded images, the vision tower trained with the LLM at 2e-5.
    assert (model.config.conv_mode, model.config.image_aspect_ratio) == ("phi", "pad")
    assert policy_table(output) == {
        "vision_tower": ("full", "2e-05"), "multi_modal_projector": ("full", "2e-05"), "language_model": ("full", "2e-05")}
    # It started from the stage-1 projector: 3 steps at <= 2e-5 move it by at most ~3e-5, while stage 1
    # moved it from its initial values by ~1e-3 per element.
    stage1 = load_file(str(pretrain[0] / "mm_projector.safetensors"))
    for name, tensor in stage1.items():
        assert torch.allclose(model.state_dict()[name], tensor, atol=1e-4), name


def test_finetune_lora_takes_paths_from_the_environment_and_loads_over_its_base(stage2, models, workdir):
    output = stage2["lora"].output()
    out = workdir / "out/lora"
    adapter = json.loads((out / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (128, 256)  # LLaVA-1.5's LoRA recipe
    assert policy_table(output) == {
        "vision_tower": ("full", "2e-05"), "multi_modal_projector": ("full", "2e-05"), "language_model": ("lora", "0.0002")}
    _, model, _, _ = load_pretrained_model(str(out), model_base=models["llm"])
    assert model.config.conv_mode == "phi"


def test_finetune_qlora_with_the_llava15_recipe(stage2, models, workdir):
    output = stage2["qlora"].output()
    out = workdir / "out/qlora"
    quantization = json.loads((out / "config.json").read_text())["text_config"]["quantization_config"]
    assert (quantization["load_in_4bit"], quantization["bnb_4bit_quant_type"],
            quantization["bnb_4bit_use_double_quant"]) == (True, "nf4", True)
    # RECIPE=llava15: v1 template, the vision tower frozen (Mipha's recipe trains it).
    assert policy_table(output) == {
        "vision_tower": ("frozen", "-"), "multi_modal_projector": ("full", "2e-05"), "language_model": ("lora", "0.0002")}
    _, model, _, _ = load_pretrained_model(str(out), model_base=models["llm"])
    assert model.config.conv_mode == "v1"


def test_two_processes_on_the_cpu_launch_with_torchrun(stage2, workdir):
    output = stage2["torchrun"].output()
    command = launched_command(output)
    assert command[:6] == [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
    # GLOBAL_BATCH=4 = 2 per device x 2 processes: no accumulation; 2 steps see 8 of 24 samples.
    assert last_flag_values(command)["gradient_accumulation_steps"] == "1"
    state = json.loads((workdir / "out/pretrain-2proc/trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1]["epoch"] == pytest.approx(1 / 3, abs=1e-3)
    assert (workdir / "out/pretrain-2proc/mm_projector.safetensors").is_file()


def free_port() -> str:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return str(probe.getsockname()[1])


def test_two_machines_meet_through_nnodes(workdir, data, models):
    """NNODES=2 as two machines run it, here both on this one (MASTER_ADDR=127.0.0.1): they train as one job.
    The user's --warmup_ratio, which used to stop the scripts, is passed too."""
    variables = dict(SMALL_BATCH, NNODES="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=free_port())
    args = ["--model_name_or_path", models["llm"], "--vision_tower", models["tower"], "--data_path", data["caption"],
            "--image_folder", data["folder"], "--max_steps", "2", "--warmup_ratio", "0.5"]
    runs = [ScriptRun("pretrain.sh", [*args, "--output_dir", f"out/node{rank}"],
                      script_env(**variables, NODE_RANK=str(rank)), workdir) for rank in (0, 1)]
    output = runs[0].output()
    runs[1].output()
    assert launched_command(output)[3:11] == ["--nnodes", "2", "--node_rank", "0", "--master_addr", "127.0.0.1",
                                              "--master_port", variables["MASTER_PORT"]]
    # GLOBAL_BATCH=4 = 2 per process x 1 process x 2 machines: 2 steps see 8 of the 24 samples.
    state = json.loads((workdir / "out/node0/trainer_state.json").read_text())
    assert state["global_step"] == 2 and state["log_history"][-1]["epoch"] == pytest.approx(1 / 3, abs=1e-3)
    assert not (workdir / "out/node1/mm_projector.safetensors").exists()  # the first machine saves


# ---------------------------------------------------------------- the composed command (DRY_RUN=1)


def dry_run(name: str, *args: str, **variables: str) -> list[str]:
    result = subprocess.run(["bash", str(SCRIPTS / name), *args], env=script_env(DRY_RUN="1", **variables),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


# The seeds' published recipes. Accumulation is what 8 GPUs need for the global batch: Mipha 32x1 then
# 4x4, LLaVA-1.5 32x1 then 16x1, XTuner LLaVA-Phi-3-mini 16x2 then 8x2.
RECIPES = {
    ("pretrain.sh", "mipha3b"): dict(model_name_or_path="microsoft/phi-2", vision_tower="google/siglip-so400m-patch14-384",
                                     version="plain", learning_rate="1e-3", num_train_epochs="1", model_max_length="2048",
                                     per_device_train_batch_size="32", gradient_accumulation_steps="1",
                                     tune_mm_mlp_adapter="True", image_aspect_ratio="square"),
    ("pretrain.sh", "llava15"): dict(model_name_or_path="lmsys/vicuna-7b-v1.5", vision_tower="openai/clip-vit-large-patch14-336",
                                     version="plain", learning_rate="1e-3", num_train_epochs="1", model_max_length="2048",
                                     per_device_train_batch_size="32", gradient_accumulation_steps="1",
                                     tune_mm_mlp_adapter="True", image_aspect_ratio="square"),
    ("pretrain.sh", "phi3mini"): dict(model_name_or_path="microsoft/Phi-3-mini-4k-instruct",
                                      vision_tower="openai/clip-vit-large-patch14-336", version="phi3_chat",
                                      learning_rate="1e-3", num_train_epochs="1", model_max_length="4096",
                                      per_device_train_batch_size="16", gradient_accumulation_steps="2",
                                      tune_mm_mlp_adapter="True", image_aspect_ratio="square"),
    ("finetune.sh", "mipha3b"): dict(model_name_or_path="microsoft/phi-2", vision_tower="google/siglip-so400m-patch14-384",
                                     version="phi", learning_rate="2e-5", num_train_epochs="2", model_max_length="2048",
                                     per_device_train_batch_size="4", gradient_accumulation_steps="4",
                                     unfreeze_mm_vision_tower="True", image_aspect_ratio="pad",
                                     group_by_modality_length="True",
                                     pretrain_mm_mlp_adapter="./checkpoints/mipha-3b-pretrain/mm_projector.safetensors",
                                     output_dir="./checkpoints/mipha-3b"),
    ("finetune.sh", "llava15"): dict(model_name_or_path="lmsys/vicuna-7b-v1.5", vision_tower="openai/clip-vit-large-patch14-336",
                                     version="v1", learning_rate="2e-5", num_train_epochs="1", model_max_length="2048",
                                     per_device_train_batch_size="16", gradient_accumulation_steps="1",
                                     unfreeze_mm_vision_tower="False", image_aspect_ratio="pad",
                                     group_by_modality_length="True",
                                     pretrain_mm_mlp_adapter="./checkpoints/llava-v1.5-7b-pretrain/mm_projector.safetensors",
                                     output_dir="./checkpoints/llava-v1.5-7b"),
    ("finetune.sh", "phi3mini"): dict(model_name_or_path="microsoft/Phi-3-mini-4k-instruct",
                                      vision_tower="openai/clip-vit-large-patch14-336", version="phi3_chat",
                                      learning_rate="2e-5", num_train_epochs="2", model_max_length="4096",
                                      per_device_train_batch_size="8", gradient_accumulation_steps="2",
                                      unfreeze_mm_vision_tower="True", image_aspect_ratio="pad",
                                      group_by_modality_length="True", output_dir="./checkpoints/llava-phi-3-mini"),
    ("finetune_lora.sh", "llava15"): dict(version="v1", lora_enable="True", lora_r="128", lora_alpha="256",
                                          learning_rate="2e-4", mm_projector_lr="2e-5", num_train_epochs="1",
                                          per_device_train_batch_size="16", gradient_accumulation_steps="1",
                                          output_dir="./checkpoints/llava-v1.5-7b-lora"),
    ("finetune_qlora.sh", "mipha3b"): dict(version="phi", lora_enable="True", lora_r="128", lora_alpha="256",
                                           learning_rate="2e-4", mm_projector_lr="2e-5", mm_vision_tower_lr="2e-5",
                                           unfreeze_mm_vision_tower="True", bits="4", double_quant="True",
                                           quant_type="nf4", output_dir="./checkpoints/mipha-3b-qlora"),
}


@pytest.mark.parametrize("script,recipe", sorted(RECIPES))
def test_each_recipe_composes_the_seeds_numbers(script, recipe):
    flags = last_flag_values(dry_run(script, RECIPE=recipe, LAUNCHER="torchrun", NPROC="8"))
    assert {name: flags.get(name) for name in RECIPES[script, recipe]} == RECIPES[script, recipe]
    assert flags["mm_projector_type"] == "mlp2x_gelu" and flags["mm_vision_select_layer"] == "-2"


def test_mipha3b_is_the_default_recipe():
    assert dry_run("finetune.sh") == dry_run("finetune.sh", RECIPE="mipha3b")


@pytest.mark.parametrize("script", SCRIPT_NAMES)
def test_an_unknown_recipe_stops_with_the_choices(script):
    result = subprocess.run(["bash", str(SCRIPTS / script)], env=script_env(RECIPE="llava16"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"mvlm: unknown RECIPE='llava16' for {script}; choose one of: mipha3b (default), mipha2.4b, mipha1.6b, "
        f"llava15, llava15_lora, phi3mini, phi3mini_qlora, internvl_chat "
        f"(e.g. RECIPE=llava15 bash scripts/{script} ...)")


def test_global_batch_is_kept_for_the_per_device_batch_the_user_passes():
    # 128 / (8 x 1 process) = 16, whichever spelling of the flag, and the user's value is the last one.
    for spelling in (["--per_device_train_batch_size", "8"], ["--per_device_train_batch_size=8"]):
        flags = last_flag_values(dry_run("finetune.sh", *spelling))
        assert flags["gradient_accumulation_steps"] == "16"
    # The user's own accumulation is left alone, even where it breaks the global batch.
    command = dry_run("finetune.sh", "--gradient_accumulation_steps", "3")
    assert command.count("--gradient_accumulation_steps") == 1 and last_flag_values(command)["gradient_accumulation_steps"] == "3"


def test_a_global_batch_the_hardware_cannot_divide_stops_with_a_clear_message():
    result = subprocess.run(["bash", str(SCRIPTS / "pretrain.sh")], env=script_env(GLOBAL_BATCH="100", NPROC="3", LAUNCHER="torchrun"),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "GLOBAL_BATCH=100 is not a multiple of the per-device batch 32 x NPROC=3" in result.stderr


def test_user_flags_come_last_and_environment_overrides_the_recipe():
    command = dry_run("pretrain.sh", "--learning_rate", "5e-4", "--bf16", "False",
                      LEARNING_RATE="2e-3", DATA_PATH="d.json", OUTPUT_DIR="out/x")
    flags = last_flag_values(command)
    assert (flags["learning_rate"], flags["data_path"], flags["output_dir"]) == ("5e-4", "d.json", "out/x")
    assert command[-4:] == ["--learning_rate", "5e-4", "--bf16", "False"]
    assert command[command.index("--learning_rate") + 1] == "2e-3"  # the script's own, overridden by the user's


WARMUP_SPELLINGS = {  # the user's flag -> the steps it gives over 1,000 training steps
    ("--warmup_ratio", "0.05"): 50, ("--warmup_ratio=0.05",): 50, ("--warmup_steps", "7"): 7, ("--warmup_steps=7",): 7}


def parsed_training_arguments(command: list[str]):
    """What `python -m mvlm.train.train` makes of the command's flags (the crash used to happen here)."""
    import transformers

    from mvlm.train.arguments import DataArguments, ModelArguments, TrainingArguments

    flags = command[command.index("mvlm.train.train") + 1:]
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=flags)[2]


@pytest.mark.parametrize("script", ["pretrain.sh", "finetune.sh"])
@pytest.mark.parametrize("spelling", sorted(WARMUP_SPELLINGS))
def test_the_users_warmup_flag_replaces_the_scripts_warmup(script, spelling):
    command = dry_run(script, *spelling, WARMUP_RATIO="0.1")
    warmup = [arg for arg in command if arg.startswith(("--warmup_ratio", "--warmup_steps"))]
    assert warmup == [spelling[0]], command  # the user's alone: the script's WARMUP_RATIO gives way
    assert parsed_training_arguments(command).get_warmup_steps(1000) == WARMUP_SPELLINGS[spelling]


def test_warmup_ratio_from_the_environment_reaches_the_trainer():
    command = dry_run("pretrain.sh", WARMUP_RATIO="0.1")
    assert last_flag_values(command)["warmup_steps"] == "0.1"  # transformers 5: below 1, a ratio
    assert parsed_training_arguments(command).get_warmup_steps(1000) == 100


@pytest.mark.parametrize("script,config", [("pretrain.sh", "zero2.json"), ("finetune.sh", "zero3.json"),
                                           ("finetune_lora.sh", "zero3.json"), ("finetune_qlora.sh", "zero2.json")])
def test_gpus_launch_with_deepspeed_bf16_and_tf32(eight_gpus, script, config):
    env = {key: value for key, value in script_env(LAUNCHER="deepspeed", **eight_gpus).items()
           if key != "CUDA_VISIBLE_DEVICES"}
    result = subprocess.run(["bash", str(SCRIPTS / script)], env={**env, "DRY_RUN": "1"},
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    command = shlex.split(result.stdout)
    assert command[:9] == [sys.executable, "-m", "deepspeed.launcher.runner", "--num_gpus", "8",
                           "--master_port", "29500", "--module", "mvlm.train.train"]
    flags = last_flag_values(command)
    assert (flags["deepspeed"], flags["bf16"], flags["tf32"]) == (str(SCRIPTS / config), "True", "True")
    assert "--use_cpu" not in command


def test_cuda_visible_devices_narrows_the_gpus_and_raises_the_accumulation(eight_gpus):
    flags = last_flag_values(dry_run("finetune.sh", LAUNCHER="deepspeed", CUDA_VISIBLE_DEVICES="0,1", **eight_gpus))
    assert flags["gradient_accumulation_steps"] == "16"  # 128 / (4 per device x 2 GPUs)
    command = dry_run("finetune.sh", LAUNCHER="deepspeed", CUDA_VISIBLE_DEVICES="0,1", **eight_gpus)
    assert command[command.index("--num_gpus") + 1] == "2"


# ---------------------------------------------------------------- many machines (DRY_RUN=1, fake GPUs)


def gpu_env(eight_gpus, **variables: str) -> dict[str, str]:
    """This machine with eight GPUs (the fake nvidia-smi), all visible, plus `variables`."""
    env = script_env(DRY_RUN="1", **eight_gpus, **variables)
    del env["CUDA_VISIBLE_DEVICES"]
    return env


def gpu_dry_run(eight_gpus, name: str, *args: str, **variables: str) -> list[str]:
    result = subprocess.run(["bash", str(SCRIPTS / name), *args], env=gpu_env(eight_gpus, **variables),
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    return shlex.split(result.stdout)


def test_nnodes_runs_torchrun_on_each_machine_with_zero_and_the_global_batch(eight_gpus):
    command = gpu_dry_run(eight_gpus, "finetune.sh", NNODES="2", NODE_RANK="1", MASTER_ADDR="10.0.0.1",
                          MASTER_PORT="29600")
    assert command[:17] == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", "1",
                            "--master_addr", "10.0.0.1", "--master_port", "29600", "--nproc_per_node", "8", "-m",
                            "mvlm.train.train", "--deepspeed", str(SCRIPTS / "zero3.json")]
    flags = last_flag_values(command)
    assert (flags["bf16"], flags["tf32"]) == ("True", "True")
    assert flags["gradient_accumulation_steps"] == "2"  # Mipha's 128 = 4 per GPU x 8 GPUs x 2 machines x 2


def test_nnodes_on_machines_without_gpus_runs_torchrun_on_the_cpu():
    command = dry_run("pretrain.sh", NNODES="2", NODE_RANK="0", MASTER_ADDR="head")
    assert command[:15] == [sys.executable, "-m", "torch.distributed.run", "--nnodes", "2", "--node_rank", "0",
                            "--master_addr", "head", "--master_port", "29500", "--nproc_per_node", "1", "-m",
                            "mvlm.train.train"]
    flags = last_flag_values(command)
    assert flags["use_cpu"] == "True" and "--deepspeed" not in command
    assert flags["gradient_accumulation_steps"] == "4"  # 256 = 32 per process x 1 process x 2 machines x 4


def test_a_hostfile_runs_deepspeeds_launcher_over_all_its_slots(eight_gpus, tmp_path):
    hostfile = tmp_path / "hostfile"
    hostfile.write_text("# the two machines\nworker-0 slots=8\n\n  worker-1 slots=8\n")
    command = gpu_dry_run(eight_gpus, "finetune.sh", HOSTFILE=str(hostfile), MASTER_ADDR="10.0.0.1")
    assert command[:14] == [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile),
                            "--master_addr", "10.0.0.1", "--master_port", "29500", "--module", "mvlm.train.train",
                            "--deepspeed", str(SCRIPTS / "zero3.json"), "--bf16"]
    assert last_flag_values(command)["gradient_accumulation_steps"] == "2"  # 128 = 4 x 16 slots x 2
    # NPROC caps every host at that many GPUs (DeepSpeed's --num_gpus); without MASTER_ADDR DeepSpeed finds it.
    command = gpu_dry_run(eight_gpus, "finetune.sh", HOSTFILE=str(hostfile), NPROC="4")
    assert command[:10] == [sys.executable, "-m", "deepspeed.launcher.runner", "--hostfile", str(hostfile),
                            "--num_gpus", "4", "--master_port", "29500", "--module"]
    assert last_flag_values(command)["gradient_accumulation_steps"] == "4"  # 128 = 4 x (4 x 2 hosts) x 4


BAD_MANY_MACHINES = {  # settings -> the one line they stop with
    "nnodes-zero": (dict(NNODES="0"), "NNODES must be a positive integer, got '0'"),
    "nnodes-word": (dict(NNODES="two"), "NNODES must be a positive integer, got 'two'"),
    "no-node-rank": (dict(NNODES="2", MASTER_ADDR="head"), "NNODES=2 needs NODE_RANK, this machine's number: "
                                                            "0 on the MASTER_ADDR machine, 1 ... 1 on the others"),
    "node-rank-too-big": (dict(NNODES="2", NODE_RANK="2", MASTER_ADDR="head"),
                          "NODE_RANK must be 0 ... 1 (NNODES=2), got '2'"),
    "node-rank-negative": (dict(NNODES="2", NODE_RANK="-1", MASTER_ADDR="head"),
                           "NODE_RANK must be 0 ... 1 (NNODES=2), got '-1'"),
    "no-master-addr": (dict(NNODES="2", NODE_RANK="0"),
                       "NNODES=2 needs MASTER_ADDR, the address of the NODE_RANK=0 machine that the others reach"),
    "bad-port": (dict(NNODES="2", NODE_RANK="0", MASTER_ADDR="head", MASTER_PORT="http"),
                 "MASTER_PORT must be a positive integer, got 'http'"),
    "python-launcher": (dict(NNODES="2", NODE_RANK="0", MASTER_ADDR="head", LAUNCHER="python"),
                        "LAUNCHER=python runs one process on one machine, but NPROC=8 x NNODES=2; "
                        "use LAUNCHER=torchrun"),
    "no-hostfile": (dict(HOSTFILE="/no/such/hostfile"),
                    "HOSTFILE=/no/such/hostfile is not a file; it lists the machines, one 'HOST slots=GPUS' line each"),
    "both-ways": (dict(HOSTFILE="{hostfile}", NNODES="2"),
                  "give HOSTFILE (DeepSpeed's launcher starts every machine from this one) or NNODES (torchrun on "
                  "each machine), not both"),
    "hostfile-torchrun": (dict(HOSTFILE="{hostfile}", LAUNCHER="torchrun"),
                          "HOSTFILE is read by DeepSpeed's launcher, which needs GPUs on this machine and deepspeed "
                          "(LAUNCHER=auto or deepspeed); otherwise use NNODES, NODE_RANK and MASTER_ADDR (torchrun "
                          "on each machine)"),
    "hostfile-bad-line": (dict(HOSTFILE="{bad_hostfile}"),
                          "HOSTFILE={bad_hostfile} line 2 is not 'HOST slots=GPUS': worker-1 8"),
    "global-batch": (dict(NNODES="3", NODE_RANK="0", MASTER_ADDR="head"),
                     "GLOBAL_BATCH=128 is not a multiple of the per-device batch 4 x NPROC=8 x NNODES=3; change "
                     "GLOBAL_BATCH, PER_DEVICE_BATCH (or --per_device_train_batch_size) or the number of processes, "
                     "or pass --gradient_accumulation_steps yourself"),
}


@pytest.mark.parametrize("case", sorted(BAD_MANY_MACHINES))
def test_bad_many_machine_settings_stop_with_one_line(eight_gpus, tmp_path, case):
    files = {"hostfile": tmp_path / "hostfile", "bad_hostfile": tmp_path / "bad-hostfile"}
    files["hostfile"].write_text("worker-0 slots=8\nworker-1 slots=8\n")
    files["bad_hostfile"].write_text("worker-0 slots=8\nworker-1 8\n")
    variables, message = BAD_MANY_MACHINES[case]
    variables = {key: value.format(**files) for key, value in variables.items()}
    result = subprocess.run(["bash", str(SCRIPTS / "finetune.sh")], env=gpu_env(eight_gpus, **variables),
                            capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (2, "")
    assert result.stderr.splitlines() == ["mvlm: " + message.format(**files)]


def test_deepspeed_configs_have_llavas_keys_and_no_optimizer():
    for name, stage in (("zero2.json", 2), ("zero3.json", 3), ("zero3_offload.json", 3)):
        config = json.loads((SCRIPTS / name).read_text())
        assert "optimizer" not in config and "scheduler" not in config, name  # Trainer's own, with mvlm's groups
        assert config["bf16"]["enabled"] == config["fp16"]["enabled"] == "auto"
        for key in ("train_micro_batch_size_per_gpu", "train_batch_size", "gradient_accumulation_steps"):
            assert config[key] == "auto", (name, key)
        zero = config["zero_optimization"]
        assert (zero["stage"], zero["overlap_comm"], zero["contiguous_gradients"], zero["reduce_bucket_size"]) == (
            stage, True, True, "auto"), name
        if stage == 3:
            assert zero["stage3_gather_16bit_weights_on_model_save"] is True
            assert zero["stage3_prefetch_bucket_size"] == zero["stage3_param_persistence_threshold"] == "auto"
    offload = json.loads((SCRIPTS / "zero3_offload.json").read_text())
    assert offload["zero_optimization"]["offload_optimizer"] == offload["zero_optimization"]["offload_param"] == {
        "device": "cpu", "pin_memory": True}
    assert offload["zero_force_ds_cpu_optimizer"] is False  # lets DeepSpeed take Trainer's torch AdamW
