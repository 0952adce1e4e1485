"""Two-process training on the CPU: torchrun DDP, DeepSpeed ZeRO-2 and ZeRO-3 (gloo), tiny models.

Each run is a real `torchrun --nproc_per_node 2` subprocess of the training entry point (through
tests/helpers/train_recording_batches.py, which records which batches held images) with a time limit, so a
hang fails the test instead of stalling it. The stage-2 data is two samples, one text-only and one with
an image, at one sample per process: at every step one rank's batch has no image, which hangs DDP and
crashes ZeRO-3 unless every rank uses the same parameters. Both stage-2 runs start from the ZeRO-3
stage-1 projector (`--pretrain_mm_mlp_adapter`), LLaVA's two stages. Runs on different backends check
each other: ZeRO-3 must write the same weights as DDP (stage 2) and as ZeRO-2 (stage 1), in every
checkpoint.

DeepSpeed compiles one small C++ op (shared-memory communication) on first use, 35 s to 2 min on two
cores; it is cached in $TORCH_EXTENSIONS_DIR (default here: <venv>/torch_extensions). With the op
cached the file takes about 130 s, nearly all of it process start-up (eight two-process runs).
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import psutil
import pytest
import torch
import transformers
from safetensors.torch import load_file

from mvlm.loading import load_pretrained_model

from mvlm.model.builder import build_model
from tests.helpers import synthetic

REPO = Path(__file__).resolve().parents[1]
RECORDER = Path(__file__).parent / "helpers" / "train_recording_batches.py"
RUN_TIMEOUT = 240  # seconds; a run takes about 25
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2"]
PROJECTOR_KEYS = sorted(f"multi_modal_projector.linear_{i}.{kind}" for i in (1, 2) for kind in ("weight", "bias"))


def extensions_dir() -> str:
    return os.environ.get("TORCH_EXTENSIONS_DIR") or os.path.join(sys.prefix, "torch_extensions")


def run_env() -> dict[str, str]:
    python_path = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    return dict(os.environ, TORCH_EXTENSIONS_DIR=extensions_dir(), OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1",
                CUDA_VISIBLE_DEVICES="", PYTHONPATH=python_path)


def run_to_end(command: list[str], log: Path, timeout: float) -> None:
    """Run `command` (its own process group, output to `log`); fail with the log's tail on error or timeout."""
    with open(log, "w") as handle:
        process = subprocess.Popen(command, stdout=handle, stderr=subprocess.STDOUT, env=run_env(), cwd=REPO,
                                   start_new_session=True)
        try:
            returncode = process.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            # torchrun's workers live in sessions of their own: kill them by process id.
            for child in [*psutil.Process(process.pid).children(recursive=True), process]:
                with contextlib.suppress(psutil.NoSuchProcess):
                    child.kill()
            process.wait()
            pytest.fail(f"no result after {timeout}s (hung?): {' '.join(command)}\n{tail(log)}")
    assert returncode == 0, f"exit code {returncode}: {' '.join(command)}\n{tail(log)}"


def tail(log: Path, lines: int = 60) -> str:
    return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])


@pytest.fixture(scope="module")
def deepspeed_ops(tmp_path_factory):
    """Compile (first time only) or load DeepSpeed's CPU communication op before the timed runs."""
    log = tmp_path_factory.mktemp("deepspeed-ops") / "build.log"
    run_to_end([sys.executable, "-c", "from deepspeed.comm.torch import build_shm_op; build_shm_op()"], log, 900)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    folder = tmp_path_factory.mktemp("data")
    mixed = synthetic.write_dataset(str(folder), 2, seed=3, kind="qa", text_only_every=2)
    with open(mixed) as handle:
        assert ["image" in sample for sample in json.load(handle)] == [False, True]
    return {"folder": str(folder), "mixed": mixed, "caption": synthetic.write_dataset(str(folder), 8, seed=4,
                                                                                       kind="caption")}


def zero_config(folder: Path, stage: int, gather_on_save: bool = True) -> str:
    """A minimal DeepSpeed config: no optimizer section (Trainer's AdamW, so no Adam op to build)."""
    zero = {"stage": stage}
    if stage == 3:
        zero["stage3_gather_16bit_weights_on_model_save"] = gather_on_save
    config = {"zero_optimization": zero, "train_micro_batch_size_per_gpu": "auto", "train_batch_size": "auto",
              "gradient_accumulation_steps": "auto", "gradient_clipping": "auto"}
    path = folder / f"zero{stage}-{'gather' if gather_on_save else 'nogather'}.json"
    path.write_text(json.dumps(config))
    return str(path)


def train(checkpoints, output_dir: Path, *flags: str, model: Path | None = None) -> list[list[bool]]:
    """Three steps of training on two processes, a checkpoint at step 2; per rank, which batches held images.

    The model is built from the tiny LLM and tower, or continued from the mvlm checkpoint `model`.
    """
    batch_log = output_dir.with_name(output_dir.name + "-batches")
    batch_log.mkdir(parents=True, exist_ok=True)
    start = (["--model_name_or_path", str(model)] if model is not None else
             ["--model_name_or_path", checkpoints("llm", "llama"), "--vision_tower", checkpoints("tower", "clip")])
    command = [
        *TORCHRUN, str(RECORDER), str(batch_log), *start, *run_flags(output_dir),
        "--save_strategy", "steps", "--save_steps", "2", "--use_cpu", "True", "--ddp_backend", "gloo", *flags,
    ]
    run_to_end(command, output_dir.with_name(output_dir.name + ".log"), RUN_TIMEOUT)
    return [json.loads((batch_log / f"batches-rank{rank}.json").read_text()) for rank in (0, 1)]


def run_flags(output_dir: Path) -> list[str]:
    """Three steps, quiet, no DataLoader workers: what every two-process run here passes."""
    return ["--output_dir", str(output_dir), "--max_steps", "3", "--report_to", "none", "--logging_steps", "1",
            "--dataloader_num_workers", "0", "--disable_tqdm", "True"]


def stage2_flags(data, stage1_out: Path, train_tower: bool = True) -> list[str]:
    """Stage 2 from a stage-1 projector, by default with the tower unfrozen (every part trains), one
    sample per process, mixed modalities."""
    return ["--data_path", data["mixed"], "--image_folder", data["folder"], "--version", "vicuna_v1",
            "--pretrain_mm_mlp_adapter", str(stage1_out / "mm_projector.safetensors"),
            "--per_device_train_batch_size", "1", "--unfreeze_mm_vision_tower", str(train_tower),
            "--learning_rate", "1e-3"]


def stage1_flags(data) -> list[str]:
    return ["--data_path", data["caption"], "--image_folder", data["folder"], "--version", "plain",
            "--tune_mm_mlp_adapter", "True", "--per_device_train_batch_size", "2", "--learning_rate", "1e-2"]


@pytest.fixture(scope="module")
def initial(checkpoints):
    """The untrained model's tensors, built as `main()` builds it (same seed)."""
    transformers.set_seed(42)
    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"))
    return {name: tensor.clone() for name, tensor in model.state_dict().items()}


@pytest.fixture(scope="module")
def ddp_stage2(checkpoints, data, zero3_stage1, tmp_path_factory):
    out = tmp_path_factory.mktemp("ddp") / "finetune"
    # Strict DDP: a rank that skipped the tower and projector would hang the next all-reduce.
    batches = train(checkpoints, out, *stage2_flags(data, zero3_stage1[0]), "--ddp_find_unused_parameters", "False")
    return out, batches


@pytest.fixture(scope="module")
def zero3_stage2(checkpoints, data, zero3_stage1, tmp_path_factory):
    """LLaVA's two stages on ZeRO-3: stage 2 starts from the ZeRO-3 stage-1 projector."""
    folder = tmp_path_factory.mktemp("zero3-stage2")
    out = folder / "finetune"
    return out, train(checkpoints, out, *stage2_flags(data, zero3_stage1[0]), "--deepspeed", zero_config(folder, 3))


@pytest.fixture(scope="module")
def zero2_stage1(checkpoints, data, deepspeed_ops, tmp_path_factory):
    folder = tmp_path_factory.mktemp("zero2-stage1")
    out = folder / "pretrain"
    return out, train(checkpoints, out, *stage1_flags(data), "--deepspeed", zero_config(folder, 2))


@pytest.fixture(scope="module")
def zero3_stage1(checkpoints, data, deepspeed_ops, tmp_path_factory):
    # Without 16-bit gathering on save Trainer hands `_save` an empty state dict: the projector must
    # still come out whole (mvlm gathers it itself).
    folder = tmp_path_factory.mktemp("zero3-stage1")
    out = folder / "pretrain"
    return out, train(checkpoints, out, *stage1_flags(data), "--deepspeed", zero_config(folder, 3, gather_on_save=False))


def assert_one_text_only_rank_per_step(batches: list[list[bool]], steps: int = 3) -> None:
    assert [len(rank) for rank in batches] == [steps, steps], batches
    assert all(rank0 != rank1 for rank0, rank1 in zip(*batches)), batches  # one rank with an image, one without


def assert_close_tensors(actual: dict, expected: dict, atol: float = 1e-5) -> None:
    assert sorted(actual) == sorted(expected)
    for key, tensor in expected.items():
        assert actual[key].shape == tensor.shape, key
        assert torch.allclose(actual[key], tensor, atol=atol, rtol=0), (key, (actual[key] - tensor).abs().max())


def assert_trained_every_part(state: dict, initial: dict) -> None:
    changed = {name.split(".")[0]: False for name in initial}
    for name, tensor in state.items():
        assert tensor.shape == initial[name].shape, name
        changed[name.split(".")[0]] |= bool((tensor - initial[name]).abs().max() > 1e-4)
    assert changed == {"vision_tower": True, "multi_modal_projector": True, "language_model": True}


def test_ddp_survives_a_text_only_rank_and_saves_a_loadable_checkpoint(ddp_stage2, initial):
    out, batches = ddp_stage2
    assert_one_text_only_rank_per_step(batches)
    _, model, _, _ = load_pretrained_model(str(out))
    assert_trained_every_part(model.state_dict(), initial)
    for checkpoint in ("checkpoint-2", "checkpoint-3"):
        assert sorted(load_file(out / checkpoint / "model.safetensors")) == sorted(initial)


def test_zero3_stage2_writes_the_same_whole_weights_as_ddp(zero3_stage2, ddp_stage2, initial):
    out, batches = zero3_stage2
    ddp_out, _ = ddp_stage2
    assert_one_text_only_rank_per_step(batches)
    for folder in ("checkpoint-2", "checkpoint-3", "."):
        assert_close_tensors(load_file(out / folder / "model.safetensors"),
                             load_file(ddp_out / folder / "model.safetensors"))
    assert (out / "checkpoint-2" / "global_step2").is_dir()  # DeepSpeed's own state, for resuming
    _, model, image_processor, _ = load_pretrained_model(str(out))
    assert_trained_every_part(model.state_dict(), initial)
    assert model.config.conv_mode == "vicuna_v1" and image_processor is not None


def test_zero2_stage1_saves_the_projector_alone(zero2_stage1, initial):
    out, batches = zero2_stage1
    assert [len(rank) for rank in batches] == [3, 3] and all(all(rank) for rank in batches)
    for folder in ("checkpoint-2", "checkpoint-3", "."):
        assert not (out / folder / "model.safetensors").exists()
        projector = load_file(out / folder / "mm_projector.safetensors")
        assert sorted(projector) == PROJECTOR_KEYS
        for key, tensor in projector.items():
            assert tensor.shape == initial[key].shape and (tensor - initial[key]).abs().max() > 1e-4, key


def test_zero3_stage1_gathers_the_whole_projector(zero3_stage1, zero2_stage1, checkpoints):
    out, _ = zero3_stage1
    zero2_out, _ = zero2_stage1
    for folder in ("checkpoint-2", "checkpoint-3", "."):
        assert not (out / folder / "model.safetensors").exists()
        assert_close_tensors(load_file(out / folder / "mm_projector.safetensors"),
                             load_file(zero2_out / folder / "mm_projector.safetensors"))
    _, model, _, _ = load_pretrained_model(str(out), model_base=checkpoints("llm", "llama"))
    saved = load_file(out / "mm_projector.safetensors")
    for name, tensor in model.multi_modal_projector.state_dict().items():
        assert torch.equal(tensor, saved["multi_modal_projector." + name]), name


def test_zero3_stage1_resumes_from_its_checkpoint(zero3_stage1, checkpoints, data, tmp_path):
    """Resumed at step 2 (auto-resume from output_dir), the run trains step 3 only and ends where the
    uninterrupted one ended."""
    out, _ = zero3_stage1
    resumed = tmp_path / "resumed"
    resumed.mkdir()
    shutil.copytree(out / "checkpoint-2", resumed / "checkpoint-2")
    batches = train(checkpoints, resumed, *stage1_flags(data), "--deepspeed", zero_config(tmp_path, 3))
    assert [len(rank) for rank in batches] == [1, 1]
    assert_close_tensors(load_file(resumed / "mm_projector.safetensors"), load_file(out / "mm_projector.safetensors"),
                         atol=1e-6)

    def losses(folder: Path) -> dict[int, float]:
        history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
        return {entry["step"]: entry["loss"] for entry in history if "loss" in entry}

    assert losses(resumed)[3] == pytest.approx(losses(out)[3], abs=1e-6)


def test_zero3_lora_over_an_mvlm_checkpoint_saves_whole_adapters_and_projector(zero3_stage2, zero3_stage1, data,
                                                                               initial, tmp_path):
    """LoRA under ZeRO-3, continuing the ZeRO-3 stage-2 checkpoint (built inside `deepspeed.zero.Init`,
    its projector partitioned when the stage-1 one is loaded into it): every checkpoint holds the adapters
    and the projector whole (LLaVA needed gather helpers for this), and loads over its base."""
    base, _ = zero3_stage2
    out = tmp_path / "lora"
    batches = train(None, out, *stage2_flags(data, zero3_stage1[0], train_tower=False), "--lora_enable", "True",
                    "--lora_r", "4", "--lora_alpha", "8", "--deepspeed", zero_config(tmp_path, 3), model=base)
    assert_one_text_only_rank_per_step(batches)
    for folder in ("checkpoint-2", "checkpoint-3", "."):
        adapters = load_file(out / folder / "adapter_model.safetensors")
        assert adapters and all(tensor.numel() > 0 for tensor in adapters.values())
        # B starts at zero: non-zero values are trained ones, gathered from both ranks' partitions.
        assert any(tensor.abs().max() > 0 for key, tensor in adapters.items() if "lora_B" in key)
        non_lora = load_file(out / folder / "non_lora_trainables.safetensors")
        assert sorted(non_lora) == PROJECTOR_KEYS
        assert all(non_lora[key].shape == initial[key].shape for key in PROJECTOR_KEYS)
    _, model, _, _ = load_pretrained_model(str(out), model_base=str(base))
    for name, tensor in model.multi_modal_projector.state_dict().items():
        assert torch.equal(tensor, non_lora["multi_modal_projector." + name]), name


@pytest.mark.parametrize("backend", [[], ["--deepspeed", str(REPO / "scripts" / "zero3.json")]], ids=["ddp", "zero3"])
def test_two_processes_without_use_cpu_train_together_on_the_cpu(checkpoints, data, deepspeed_ops, tmp_path, backend):
    """`torchrun --nproc_per_node 2 -m mvlm.train.train ... [--deepspeed scripts/zero3.json]` as a user types it on
    a machine without GPUs: no --use_cpu, no --ddp_backend. ZeRO-3 used to stop on DeepSpeed's batch-size check
    (world size 1 on Trainer's side, 2 on DeepSpeed's); DDP used to run two separate one-process trainings."""
    out = tmp_path / "pretrain"
    command = [*TORCHRUN, "-m", "mvlm.train.train", "--model_name_or_path", checkpoints("llm", "llama"),
               "--vision_tower", checkpoints("tower", "clip"), *stage1_flags(data), *run_flags(out), *backend]
    run_to_end(command, tmp_path / "run.log", RUN_TIMEOUT)
    state = json.loads((out / "trainer_state.json").read_text())
    # 8 captions at 2 per process: an epoch is 2 steps on two processes (4 on one), so 3 steps end at 1.5.
    assert (state["global_step"], state["log_history"][-1]["epoch"]) == (3, 1.5)
    assert sorted(load_file(out / "mm_projector.safetensors")) == PROJECTOR_KEYS


@pytest.mark.parametrize("feature_layer,unreachable", [
    (-2, ("encoder.layers.2.", "post_layernorm.")),  # LLaVA's choice: the last layer never reaches the features
    (-1, ("post_layernorm.",)),
])
def test_tower_parameters_no_gradient_reaches_are_frozen(checkpoints, feature_layer, unreachable):
    """Exactly the tower's tensors past the feature layer (3 layers here) are frozen; the rest all get gradients."""
    from mvlm.train.distributed import freeze_unreachable_tower_parameters

    model, _, _ = build_model(checkpoints("llm", "llama"), checkpoints("tower", "clip"),
                              vision_feature_layer=feature_layer)
    tower_names = [name for name, _ in model.vision_tower.named_parameters()]
    expected = sorted("vision_tower." + name for name in tower_names if name.startswith(unreachable))
    assert expected and sorted(freeze_unreachable_tower_parameters(model)) == expected
    frozen = sorted("vision_tower." + name for name, param in model.vision_tower.named_parameters()
                    if not param.requires_grad)
    assert frozen == expected
    image = torch.rand(2, 3, 28, 28)
    model.get_image_features(image).sum().backward()
    assert all(param.grad is not None for param in model.vision_tower.parameters() if param.requires_grad)
    assert freeze_unreachable_tower_parameters(model) == []  # nothing left to freeze
