"""Recipes as data (mvlm/train/recipes.py), `--recipe NAME --stage N` on train.py's command line, and the
global-batch arithmetic the scripts and train.py share. No model is built: the resolved flags are parsed
into the argument dataclasses, as train.py parses them, and compared with the numbers the seeds publish."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest
import transformers

from mvlm.conversation import conv_templates
from mvlm.errors import FlagError
from mvlm.train.arguments import DataArguments, ModelArguments, TrainingArguments
from mvlm.train.global_batch import GlobalBatchError, gradient_accumulation_steps, positive_integer
from mvlm.train.launch_plan import launch_plan, script_recipe
from mvlm.train.recipe_flags import last_value, parse_recipe_request, resolve
from mvlm.train.recipes import (
    DEFAULT_RECIPE, PROJECTOR_FILE, RECIPES, format_value, get_recipe, with_lora, with_qlora,
)
from mvlm.train.train import main
from tests.helpers import synthetic

SCRIPTS = Path(__file__).resolve().parents[1] / "scripts"
ALL_STAGES = [(name, stage) for name in RECIPES for stage in (1, 2)]


def parsed(argv: list[str]) -> tuple[ModelArguments, DataArguments, TrainingArguments]:
    """What train.py's HfArgumentParser makes of a resolved command line (on the CPU, as this machine is)."""
    parser = transformers.HfArgumentParser((ModelArguments, DataArguments, TrainingArguments))
    return parser.parse_args_into_dataclasses(args=[*argv, "--use_cpu", "True"])


def flag_values(argv: list[str]) -> dict[str, str]:
    """Each flag's last value, as argparse keeps it."""
    names = {token[2:].split("=", 1)[0] for token in argv if token.startswith("--")}
    return {name: last_value(argv, name) for name in names}


# ---------------------------------------------------------------- every recipe, both stages


@pytest.mark.parametrize("name,stage", ALL_STAGES)
def test_every_recipe_resolves_to_flags_the_argument_parser_accepts(name, stage):
    recipe = get_recipe(name, stage)
    request = resolve(["--recipe", name, "--stage", str(stage), "--output_dir", "out"], processes=8)
    model_args, data_args, training_args = parsed(request.argv)
    assert (model_args.model_name_or_path, model_args.vision_tower, model_args.conv_mode) == (
        recipe.model_name_or_path, recipe.vision_tower, recipe.conv_mode)
    assert data_args.data_path == [recipe.data_path] and data_args.image_folder == recipe.image_folder
    assert model_args.tune_mm_mlp_adapter is (stage == 1)
    assert model_args.pretrain_mm_mlp_adapter == (recipe.pretrain_mm_mlp_adapter if stage == 2 else None)
    assert model_args.vision_feature_layer == recipe.mm_vision_select_layer
    assert (training_args.learning_rate, training_args.num_train_epochs, training_args.model_max_length) == (
        recipe.learning_rate, recipe.num_train_epochs, recipe.model_max_length)
    assert training_args.get_warmup_steps(1000) == 30  # 3% warm-up everywhere
    assert training_args.output_dir == "out"  # the user's flag, over the recipe's ./checkpoints/...
    # The global batch on 8 processes: per-device batch x 8 x accumulation.
    assert (training_args.per_device_train_batch_size * 8 * training_args.gradient_accumulation_steps
            == recipe.global_batch)
    assert recipe.conv_mode in conv_templates
    assert (SCRIPTS / recipe.deepspeed).is_file()


@pytest.mark.parametrize("name", RECIPES)
def test_stage_2_starts_from_the_projector_stage_1_writes(name):
    stage1, stage2 = RECIPES[name]
    assert stage2.pretrain_mm_mlp_adapter == f"{stage1.output_dir}/{PROJECTOR_FILE}"
    assert (stage1.model_name_or_path, stage1.vision_tower, stage1.mm_vision_select_layer) == (
        stage2.model_name_or_path, stage2.vision_tower, stage2.mm_vision_select_layer)
    assert (stage1.conv_mode, stage1.image_aspect_ratio) == ("phi3_chat" if "phi3" in name else "plain", "square")
    assert stage2.output_dir != stage1.output_dir


# The seeds' numbers, as flags on 8 GPUs (the machines the papers used): Mipha 256 x 1e-3 (32 x 1) then
# 128 x 2e-5 (4 x 4) for 2 epochs, tower trained; LLaVA-1.5 32 x 1 then 16 x 1, tower frozen; XTuner
# LLaVA-Phi-3-mini 16 x 2 then 8 x 2, 4096 tokens; InternVL-Chat LLaVA-1.5's numbers from InternViT's
# 4th-last layer; the LoRA and QLoRA recipes.
PUBLISHED = {
    ("mipha3b", 1): dict(model_name_or_path="microsoft/phi-2", vision_tower="google/siglip-so400m-patch14-384",
                         version="plain", learning_rate="1e-3", num_train_epochs="1", model_max_length="2048",
                         per_device_train_batch_size="32", gradient_accumulation_steps="1", weight_decay="0",
                         image_aspect_ratio="square", output_dir="./checkpoints/mipha-3b-pretrain",
                         data_path="./playground/data/LLaVA-Pretrain/blip_laion_cc_sbu_558k.json",
                         image_folder="./playground/data/LLaVA-Pretrain/images"),
    ("mipha3b", 2): dict(model_name_or_path="microsoft/phi-2", version="phi", learning_rate="2e-5",
                         num_train_epochs="2", model_max_length="2048", per_device_train_batch_size="4",
                         gradient_accumulation_steps="4", unfreeze_mm_vision_tower="True", weight_decay="0",
                         image_aspect_ratio="pad", group_by_modality_length="True",
                         data_path="./playground/data/llava_v1_5_mix665k.json", image_folder="./playground/data",
                         pretrain_mm_mlp_adapter="./checkpoints/mipha-3b-pretrain/mm_projector.safetensors",
                         output_dir="./checkpoints/mipha-3b"),
    ("mipha2.4b", 2): dict(model_name_or_path="google/gemma-2b", vision_tower="google/siglip-so400m-patch14-384",
                           version="gemma", learning_rate="2e-5", num_train_epochs="2",
                           gradient_accumulation_steps="4", unfreeze_mm_vision_tower="True",
                           output_dir="./checkpoints/mipha-2.4b"),
    ("mipha1.6b", 1): dict(model_name_or_path="microsoft/phi-1_5", version="plain", learning_rate="1e-3",
                           per_device_train_batch_size="32", gradient_accumulation_steps="1"),
    ("llava15", 1): dict(model_name_or_path="lmsys/vicuna-7b-v1.5", vision_tower="openai/clip-vit-large-patch14-336",
                         version="plain", learning_rate="1e-3", num_train_epochs="1", model_max_length="2048",
                         per_device_train_batch_size="32", gradient_accumulation_steps="1"),
    ("llava15", 2): dict(version="v1", learning_rate="2e-5", num_train_epochs="1", per_device_train_batch_size="16",
                         gradient_accumulation_steps="1", unfreeze_mm_vision_tower="False",
                         output_dir="./checkpoints/llava-v1.5-7b"),
    ("llava15_lora", 2): dict(version="v1", lora_enable="True", lora_r="128", lora_alpha="256", lora_dropout="0.05",
                              learning_rate="2e-4", mm_projector_lr="2e-5", num_train_epochs="1",
                              per_device_train_batch_size="16", gradient_accumulation_steps="1",
                              pretrain_mm_mlp_adapter="./checkpoints/llava-v1.5-7b-pretrain/mm_projector.safetensors",
                              output_dir="./checkpoints/llava-v1.5-7b-lora"),
    ("phi3mini", 1): dict(model_name_or_path="microsoft/Phi-3-mini-4k-instruct", version="phi3_chat",
                          learning_rate="1e-3", model_max_length="4096", per_device_train_batch_size="16",
                          gradient_accumulation_steps="2"),
    ("phi3mini", 2): dict(version="phi3_chat", learning_rate="2e-5", num_train_epochs="2", model_max_length="4096",
                          per_device_train_batch_size="8", gradient_accumulation_steps="2",
                          unfreeze_mm_vision_tower="True"),
    ("phi3mini_qlora", 2): dict(version="phi3_chat", bits="4", quant_type="nf4", double_quant="True",
                                lora_enable="True", lora_r="512", lora_alpha="256", lora_vision_tower="True",
                                unfreeze_mm_vision_tower="False", learning_rate="2e-4", num_train_epochs="1",
                                per_device_train_batch_size="16", gradient_accumulation_steps="1",
                                output_dir="./checkpoints/llava-phi-3-mini-qlora"),
    ("internvl_chat", 1): dict(vision_tower="OpenGVLab/InternViT-6B-448px", mm_vision_select_layer="-4",
                               version="plain", learning_rate="1e-3", per_device_train_batch_size="32",
                               gradient_accumulation_steps="1"),
    ("internvl_chat", 2): dict(vision_tower="OpenGVLab/InternViT-6B-448px", mm_vision_select_layer="-4",
                               version="v1", learning_rate="2e-5", per_device_train_batch_size="16",
                               gradient_accumulation_steps="1", unfreeze_mm_vision_tower="False"),
}
GLOBAL_BATCH = {1: 256, 2: 128}  # every recipe's, stage by stage
DEEPSPEED = {("llava15_lora", 2): "zero3.json", ("phi3mini_qlora", 2): "zero2.json", ("mipha3b", 2): "zero3.json",
             ("mipha3b", 1): "zero2.json"}


@pytest.mark.parametrize("name,stage", sorted(PUBLISHED))
def test_recipes_hold_the_published_numbers(name, stage):
    flags = flag_values(resolve(["--recipe", name, "--stage", str(stage)], processes=8).argv)
    assert {flag: flags.get(flag) for flag in PUBLISHED[name, stage]} == PUBLISHED[name, stage]
    assert get_recipe(name, stage).global_batch == GLOBAL_BATCH[stage]
    if (name, stage) in DEEPSPEED:
        assert get_recipe(name, stage).deepspeed == DEEPSPEED[name, stage]


def test_the_lora_variants_lay_llavas_lora_recipe_over_any_stage_2():
    mipha = get_recipe("mipha3b", 2)
    lora = with_lora(mipha)
    assert (lora.lora_r, lora.lora_alpha, lora.learning_rate, lora.mm_projector_lr, lora.mm_vision_tower_lr) == (
        128, 256, 2e-4, 2e-5, 2e-5)  # Mipha trains its tower: at 2e-5 too
    assert (lora.model_name_or_path, lora.global_batch, lora.num_train_epochs) == ("microsoft/phi-2", 128, 2)
    # LLaVA-1.5's published LoRA recipe is exactly that over LLaVA-1.5's stage 2.
    llava_lora = get_recipe("llava15_lora", 2)
    assert dataclasses.replace(with_lora(get_recipe("llava15", 2)), name=llava_lora.name,
                               title=llava_lora.title) == llava_lora
    qlora = with_qlora(mipha)
    assert (qlora.bits, qlora.quant_type, qlora.double_quant, qlora.deepspeed, qlora.output_dir) == (
        4, "nf4", True, "zero2.json", "./checkpoints/mipha-3b-qlora")
    with pytest.raises(ValueError, match="stage-2 recipe"):
        with_lora(get_recipe("mipha3b", 1))


def test_recipes_are_frozen():
    with pytest.raises(AttributeError):
        get_recipe("mipha3b", 2).learning_rate = 1.0  # type: ignore[misc]


@pytest.mark.parametrize("value,text", [(1e-3, "1e-3"), (2e-5, "2e-5"), (2e-4, "2e-4"), (1.5e-5, "1.5e-5"),
                                        (0.03, "0.03"), (0.0, "0"), (2.0, "2"), (True, "True"), (-4, "-4")])
def test_flag_values_are_written_as_users_write_them(value, text):
    assert format_value(value) == text
    if isinstance(value, float):
        assert float(text) == value


# ---------------------------------------------------------------- the user's flags win


def test_explicit_flags_override_the_recipe_and_each_flag_is_given_once():
    argv = ["--recipe", "mipha3b", "--stage", "2", "--learning_rate", "1e-4", "--data_path=d.json",
            "--model_name_or_path", "./my-llm"]
    resolved = resolve(argv, processes=8).argv
    user = argv[4:]
    assert resolved[-len(user):] == user  # the user's flags, last and unchanged
    for flag in ("--learning_rate", "--model_name_or_path"):
        assert resolved.count(flag) == 1
    assert not any(token.startswith(("--data_path", "--recipe", "--stage")) for token in resolved[:-len(user)])
    model_args, data_args, training_args = parsed(resolved)
    assert (training_args.learning_rate, data_args.data_path, model_args.model_name_or_path) == (
        1e-4, ["d.json"], "./my-llm")
    assert model_args.vision_tower == "google/siglip-so400m-patch14-384"  # the rest stays the recipe's


@pytest.mark.parametrize("warmup", [["--warmup_ratio", "0.1"], ["--warmup_steps=100"]])
def test_a_warmup_flag_replaces_the_recipes_warmup_in_either_spelling(warmup):
    resolved = resolve(["--recipe", "llava15", "--stage", "1", *warmup], processes=8).argv
    assert [token for token in resolved if token.startswith("--warmup")] == [warmup[0]]
    assert parsed(resolved)[2].get_warmup_steps(1000) == 100


def test_the_global_batch_holds_for_the_users_per_device_batch_and_processes():
    def accumulation(*flags: str, processes: int) -> str:
        return flag_values(resolve(["--recipe", "mipha3b", "--stage", "2", *flags], processes=processes).argv)[
            "gradient_accumulation_steps"]

    assert accumulation(processes=8) == "4"  # 128 = 4 x 8 x 4
    assert accumulation(processes=1) == "32"
    assert accumulation("--per_device_train_batch_size", "8", processes=8) == "2"
    assert accumulation("--per_device_train_batch_size=16", processes=2) == "4"
    assert accumulation("--global_batch_size", "64", processes=8) == "2"
    # The user's own accumulation is left alone, even where it breaks the global batch.
    resolved = resolve(["--recipe", "mipha3b", "--stage", "2", "--gradient_accumulation_steps", "3"], processes=8).argv
    assert resolved.count("--gradient_accumulation_steps") == 1 and flag_values(resolved)[
        "gradient_accumulation_steps"] == "3"


def test_the_process_count_comes_from_the_launchers_world_size(monkeypatch):
    monkeypatch.setenv("WORLD_SIZE", "16")
    request = resolve(["--recipe", "mipha3b", "--stage", "2"])
    assert request.processes == 16 and flag_values(request.argv)["gradient_accumulation_steps"] == "2"
    monkeypatch.delenv("WORLD_SIZE")
    assert resolve(["--recipe", "mipha3b", "--stage", "2"]).processes == 1


def test_without_recipe_the_command_line_is_left_alone():
    argv = ["--model_name_or_path", "x", "--mm_vision_select_layer", "-2", "--data_path", "a.json", "b.json"]
    request = parse_recipe_request(argv)
    assert (request.recipe, request.print_only, request.argv) == (None, False, argv)
    assert resolve(argv).argv == argv


# ---------------------------------------------------------------- the command line, as a user runs it


def run_train(*args: str) -> subprocess.CompletedProcess:
    env = {key: value for key, value in os.environ.items() if key != "WORLD_SIZE"}
    return subprocess.run([sys.executable, "-m", "mvlm.train.train", *args], capture_output=True, text=True,
                          timeout=300, env=dict(env, CUDA_VISIBLE_DEVICES=""))


def test_print_recipe_prints_a_command_a_user_can_copy():
    """`--recipe mipha3b --stage 2 --print-recipe` needs no other flag, loads nothing (the LLM path below does
    not exist), exits 0, and what it prints runs in a shell as the same flags."""
    result = run_train("--recipe", "mipha3b", "--stage", "2", "--print-recipe", "--vision_tower", "/no/such/tower")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("# mipha3b stage 2 (visual instruction tuning): Mipha-3B (Phi-2 + ")
    # The printed text as a shell reads it, with `python` standing for a program that lists its arguments.
    shell = subprocess.run(["bash", "-c", "python() { printf '%s\\0' \"$@\"; }\n" + result.stdout],
                           capture_output=True, text=True, timeout=60)
    assert shell.returncode == 0, shell.stderr
    tokens = shell.stdout.split("\0")[:-1]
    assert tokens[:2] == ["-m", "mvlm.train.train"]
    flags = flag_values(tokens[2:])
    assert (flags["model_name_or_path"], flags["version"], flags["learning_rate"], flags["num_train_epochs"]) == (
        "microsoft/phi-2", "phi", "2e-5", "2")
    assert flags["data_path"] == "./playground/data/llava_v1_5_mix665k.json"
    assert flags["vision_tower"] == "/no/such/tower"
    assert (flags["per_device_train_batch_size"], flags["gradient_accumulation_steps"]) == ("4", "32")  # 1 process
    assert tokens[2:] == resolve(["--recipe", "mipha3b", "--stage", "2", "--vision_tower", "/no/such/tower"],
                                 processes=1).argv
    comments = " ".join(line.lstrip("# ") for line in result.stdout.splitlines() if line.startswith("#"))
    assert "--deepspeed scripts/zero3.json --bf16 True" in comments  # what the scripts add on GPUs


def test_an_unknown_recipe_is_one_line_naming_the_known_ones():
    result = run_train("--recipe", "llava16", "--stage", "2")
    assert (result.returncode, result.stdout) == (1, ""), result.stderr
    # Importing the training stack may log its own lines (bitsandbytes on a CPU); ours is one line, the last.
    ours = [line for line in result.stderr.splitlines() if line.startswith("mvlm:")]
    assert ours == ["mvlm: unknown recipe 'llava16'; choose one of: mipha3b, mipha2.4b, mipha1.6b, llava15, "
                    "llava15_lora, phi3mini, phi3mini_qlora, internvl_chat"]
    assert result.stderr.rstrip().endswith(ours[0]) and "Traceback" not in result.stderr


BAD_RECIPE_OPTIONS = {
    "stage-alone": (["--stage", "2", "--model_name_or_path", "x"], "mvlm: --stage needs --recipe NAME, one of: "
                    "mipha3b, mipha2.4b, mipha1.6b, llava15, llava15_lora, phi3mini, phi3mini_qlora, internvl_chat"),
    "print-alone": (["--print-recipe"], "mvlm: --print-recipe needs --recipe NAME, one of: mipha3b, mipha2.4b, "
                    "mipha1.6b, llava15, llava15_lora, phi3mini, phi3mini_qlora, internvl_chat"),
    "no-stage": (["--recipe", "llava15"], "mvlm: --recipe llava15 needs --stage 1 or 2 (1: feature alignment: only "
                 "the projector trains; 2: visual instruction tuning)"),
    "stage-3": (["--recipe", "llava15", "--stage", "3"], "mvlm: --stage must be 1 or 2, got '3' (1: feature "
                "alignment: only the projector trains; 2: visual instruction tuning)"),
    "no-value": (["--recipe"], "mvlm: --recipe takes one value, got none"),
    "bad-batch": (["--recipe", "llava15", "--stage", "2", "--global_batch_size", "0"],
                  "mvlm: --global_batch_size must be a positive integer, got '0'"),
    "indivisible": (["--recipe", "llava15", "--stage", "2", "--per_device_train_batch_size", "3"],
                    "mvlm: the global batch 128 is not a multiple of the per-device batch 3 x 1 process(es); pass "
                    "--global_batch_size, --per_device_train_batch_size or --gradient_accumulation_steps, or run on "
                    "another number of processes"),
}


@pytest.mark.parametrize("case", sorted(BAD_RECIPE_OPTIONS))
def test_bad_recipe_options_stop_with_one_line_and_status_1(case, monkeypatch):
    """In process: main() raises SystemExit with the line, which Python prints, exiting with status 1."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    argv, message = BAD_RECIPE_OPTIONS[case]
    with pytest.raises(SystemExit) as stopped:
        main(argv)
    assert stopped.value.code == message


def test_print_recipe_in_process_returns_none_and_prints(capsys, monkeypatch):
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert main(["--recipe", "internvl_chat", "--stage", "1", "--print-recipe"]) is None
    printed = capsys.readouterr().out
    assert "    --mm_vision_select_layer -4 \\\n" in printed and printed.endswith("    --report_to none\n")


# ---------------------------------------------------------------- the global-batch arithmetic


@pytest.mark.parametrize("global_batch,per_device,processes,steps", [
    (128, 4, 8, 4), (256, 32, 8, 1), (128, 4, 16, 2), (128, 16, 8, 1), (256, 16, 8, 2), (4, 2, 1, 2), (4, 2, 2, 1)])
def test_accumulation_keeps_the_global_batch(global_batch, per_device, processes, steps):
    assert gradient_accumulation_steps(global_batch, per_device, processes) == steps
    assert per_device * processes * steps == global_batch


@pytest.mark.parametrize("global_batch,per_device,processes", [(128, 4, 24), (100, 32, 3), (64, 32, 8), (128, 3, 1)])
def test_a_global_batch_that_does_not_divide_is_refused(global_batch, per_device, processes):
    with pytest.raises(GlobalBatchError) as refused:
        gradient_accumulation_steps(global_batch, per_device, processes)
    assert (refused.value.global_batch, refused.value.per_device_batch, refused.value.processes) == (
        global_batch, per_device, processes)
    assert isinstance(refused.value, FlagError)


@pytest.mark.parametrize("value", [0, "0", "08", "2.0", "-1", "", "x", "٣"])
def test_batch_numbers_must_be_positive_integers(value):
    with pytest.raises(FlagError, match="GLOBAL_BATCH must be a positive integer"):
        positive_integer("GLOBAL_BATCH", value)
    with pytest.raises(FlagError, match="must be a positive integer"):
        gradient_accumulation_steps(128, value, 1)  # type: ignore[arg-type]


# ---------------------------------------------------------------- what the scripts ask for


def test_the_scripts_plan_keeps_the_environments_flags_before_the_users():
    recipe = script_recipe("pretrain.sh", "", 1, None, "4", None)
    assert recipe.name == DEFAULT_RECIPE and recipe.global_batch == 4
    environment = ["--learning_rate", "2e-3", "--warmup_steps", "0.1", "--per_device_train_batch_size", "2"]
    plan = launch_plan(recipe, environment, ["--learning_rate", "5e-4", "--warmup_ratio", "0.05"], 1, "NPROC=1")
    assert plan.deepspeed == "zero2.json"
    flags = flag_values(plan.flags)
    assert (flags["learning_rate"], flags["per_device_train_batch_size"], flags["gradient_accumulation_steps"]) == (
        "2e-3", "2", "2")  # the environment's, over the recipe's; the user's come after the plan
    assert not any(token.startswith("--warmup") for token in plan.flags)  # the user's warm-up replaces both


def test_the_scripts_variants_and_output_suffix():
    recipe = script_recipe("finetune_qlora.sh", "llava15", 2, "qlora", None, "-try2")
    assert (recipe.bits, recipe.lora_r, recipe.output_dir, recipe.deepspeed) == (
        4, 128, "./checkpoints/llava-v1.5-7b-try2", "zero2.json")
    with pytest.raises(FlagError, match=r"^unknown RECIPE='x' for finetune\.sh; choose one of: mipha3b \(default\), "):
        script_recipe("finetune.sh", "x", 2, None, None, None)
    with pytest.raises(FlagError, match=r"^GLOBAL_BATCH=128 is not a multiple of the per-device batch 4 x NPROC=3;"):
        launch_plan(get_recipe("mipha3b", 2), [], [], 3, "NPROC=3")


def test_the_recipe_modules_import_no_torch():
    """The scripts resolve a recipe before every launch: that must not cost a torch import."""
    code = ("import sys, mvlm.train.launch_plan, mvlm.train.recipe_flags; "
            "print(sorted({'torch', 'transformers'} & set(sys.modules)))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert (result.returncode, result.stdout) == (0, "[]\n"), result.stderr


# ---------------------------------------------------------------- a recipe through a real (tiny) training


def test_a_recipe_trains_through_main_with_the_users_models_and_data(checkpoints, tmp_path, monkeypatch):
    """LLaVA-1.5's stage 1 with tiny stand-ins for its models and data: the recipe's template, learning rate
    and projector-only policy reach the trainer, and --global_batch_size sets the accumulation."""
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    data = synthetic.write_dataset(str(tmp_path), 8, seed=1, kind="caption")
    trainer = main([
        "--recipe", "llava15", "--stage", "1", "--global_batch_size", "4",
        "--model_name_or_path", checkpoints("llm", "llama"), "--vision_tower", checkpoints("tower", "clip"),
        "--data_path", data, "--image_folder", str(tmp_path), "--output_dir", str(tmp_path / "out"),
        "--per_device_train_batch_size", "2", "--max_steps", "1", "--dataloader_num_workers", "0",
        "--gradient_checkpointing", "False", "--use_cpu", "True",
    ])
    args = trainer.args
    assert (args.learning_rate, args.gradient_accumulation_steps, args.per_device_train_batch_size) == (1e-3, 2, 2)
    assert trainer.model.config.conv_mode == "plain"
    assert (tmp_path / "out" / PROJECTOR_FILE).is_file() and not (tmp_path / "out" / "model.safetensors").exists()
