"""`python -m mvlm.demo` (what `bash scripts/demo.sh` runs): train a tiny LLaVA-style model from scratch on
the CPU and show that it learned.

It generates the synthetic dataset (mvlm/demo/data.py), makes a tokenizer, a tiny Llama-style LM and a
tiny CLIP-style tower from scratch (mvlm/demo/models.py), then runs what a user runs: `scripts/pretrain.sh`
(stage 1, the projector on captions) and `scripts/finetune.sh` (stage 2, projector + LM on the questions)
with the demo's flags, `python -m mvlm.eval.model_vqa` on the held-out questions, `python -m
mvlm.eval.score exact` on its answers, and `python -m mvlm.serve.cli` for one question. It prints the
accuracy per question type next to what guessing would score.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import subprocess
import sys
import time
from typing import Sequence

from mvlm.demo.data import CATEGORIES, CHANCE, DemoData, write_demo_data
from mvlm.demo.models import LanguageModelSize, VisionTowerSize, save_language_model, save_vision_tower
from mvlm.errors import MvlmError

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPTS = os.path.join(REPO_ROOT, "scripts")
MARKER = ".mvlm-demo"  # marks a folder as the demo's own, so that a re-run may replace it
THREADS = 2
"""CPU threads of every step. Fixed, not taken from the machine or the shell: the order in which threads add up
partial sums changes the last bits of a result, and over 1,600 steps those bits change answers. Two suffice:
a model 192 wide gains little from more."""


@dataclasses.dataclass(frozen=True)
class DemoConfig:
    """Everything that sets the size of the demo: data, models, and the two training stages."""

    train_images: int = 12000
    caption_images: int = 3000
    test_per_category: int = 100
    describe_fraction: float = 0.3
    conv_mode: str = "mistral_instruct"
    control_tokens: tuple[str, ...] = ("[INST]", "[/INST]")
    stage1_steps: int = 50
    stage1_batch: int = 64
    stage1_lr: float = 1e-3
    stage2_steps: int = 1600
    stage2_batch: int = 64
    stage2_lr: float = 1e-3
    language_model: LanguageModelSize = LanguageModelSize()
    vision_tower: VisionTowerSize = VisionTowerSize()
    logging_steps: int = 50


FULL = DemoConfig()
QUICK = dataclasses.replace(  # about two minutes; scored 54% here (chance: 29%), count questions first
    FULL, train_images=8000, caption_images=500, test_per_category=50, stage1_steps=10, stage2_steps=250,
    stage2_lr=2e-3, logging_steps=25,
)


class DemoError(MvlmError):
    """A step of the demo failed; the message says which and where its output is."""


class Clock:
    """Prints each step with the time since the demo started."""

    def __init__(self) -> None:
        self.start = time.monotonic()

    def elapsed(self) -> float:
        return time.monotonic() - self.start

    def step(self, text: str) -> None:
        minutes, seconds = divmod(int(self.elapsed()), 60)
        print(f"\n[demo {minutes:d}:{seconds:02d}] {text}", flush=True)


def prepare_output(folder: str) -> None:
    """An empty output folder; a previous demo run there is replaced, anything else is left alone."""
    if os.path.isdir(folder) and os.listdir(folder):
        if not os.path.isfile(os.path.join(folder, MARKER)):
            raise DemoError(f"--output {folder} exists and is not a demo folder; choose another --output or empty it")
        shutil.rmtree(folder)
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, MARKER), "w", encoding="utf-8") as handle:
        handle.write("written by python -m mvlm.demo; a re-run replaces this folder\n")


def child_env(threads: int = THREADS) -> dict[str, str]:
    """The scripts' environment: this interpreter, one plain process (also on a machine with several GPUs,
    where the scripts would otherwise start one per GPU), `threads` CPU threads that yield when idle."""
    env = dict(os.environ)
    env.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    env.update(OMP_NUM_THREADS=str(threads), MKL_NUM_THREADS=str(threads))
    env.setdefault("LAUNCHER", "python")
    env.setdefault("NPROC", "1")
    env.update(PYTHON=sys.executable, NUM_WORKERS=env.get("NUM_WORKERS", "0"), HF_HUB_OFFLINE="1")
    return env


def run(
    command: Sequence[str], what: str, env: dict[str, str] | None = None, **kwargs: object
) -> subprocess.CompletedProcess:
    """Run a step as a child process whose output the user watches; a failure stops the demo."""
    result = subprocess.run(list(command), env={**child_env(THREADS), **(env or {})}, cwd=REPO_ROOT, **kwargs)
    if result.returncode != 0:
        raise DemoError(f"{what} failed (exit status {result.returncode}); its output is above")
    return result


def train(config: DemoConfig, data: DemoData, llm: str, tower: str, folder: str, clock: Clock) -> str:
    """Stage 1 and stage 2 through the user's scripts; returns the stage-2 checkpoint folder."""
    common = [
        "--model_name_or_path", llm, "--vision_tower", tower, "--image_folder", data.folder,
        "--mm_vision_select_layer", "0", "--gradient_accumulation_steps", "1", "--gradient_checkpointing", "False",
        "--save_strategy", "no", "--model_max_length", "256", "--logging_steps", str(config.logging_steps),
        "--warmup_steps", "0.05", "--dataloader_num_workers", "0", "--seed", "0",
        "--full_determinism", "True",  # deterministic kernels where PyTorch has them: same numbers every run
    ]
    stage1 = os.path.join(folder, "checkpoints", "pretrain")
    stage2 = os.path.join(folder, "checkpoints", "finetune")
    recipe = {"RECIPE": "llava15"}  # LLaVA-1.5's recipe (Llama-style LM, CLIP-style tower), sized down by flags
    clock.step(f"stage 1: scripts/pretrain.sh, the projector learns from captions ({config.stage1_steps} steps)")
    run(["bash", os.path.join(SCRIPTS, "pretrain.sh"), *common,
         "--data_path", data.captions, "--output_dir", stage1, "--max_steps", str(config.stage1_steps),
         "--per_device_train_batch_size", str(config.stage1_batch), "--learning_rate", str(config.stage1_lr)],
        "stage 1 (scripts/pretrain.sh)", env=recipe)
    clock.step(f"stage 2: scripts/finetune.sh, projector and LM learn to answer ({config.stage2_steps} steps)")
    run(["bash", os.path.join(SCRIPTS, "finetune.sh"), *common,
         "--version", config.conv_mode, "--data_path", data.instruct, "--output_dir", stage2,
         "--pretrain_mm_mlp_adapter", os.path.join(stage1, "mm_projector.safetensors"),
         "--max_steps", str(config.stage2_steps), "--per_device_train_batch_size", str(config.stage2_batch),
         "--learning_rate", str(config.stage2_lr)],
        "stage 2 (scripts/finetune.sh)", env=recipe)
    return stage2


def evaluate(checkpoint: str, data: DemoData, folder: str) -> dict:
    """model_vqa on the held-out questions, then the exact-match scorer; returns the scorer's metrics."""
    answers = os.path.join(folder, "eval", "answers.jsonl")
    scores = os.path.join(folder, "eval", "scores.json")
    run([sys.executable, "-m", "mvlm.eval.model_vqa", "--model-path", checkpoint, "--question-file",
         data.test_questions, "--image-folder", data.folder, "--answers-file", answers, "--batch-size", "50",
         "--max_new_tokens", "8", "--device", "cpu"], "evaluation (mvlm.eval.model_vqa)")
    run([sys.executable, "-m", "mvlm.eval.score", "exact", "--answers", answers, "--annotation-file",
         data.test_answers, "--json", scores], "scoring (mvlm.eval.score exact)")
    with open(scores, encoding="utf-8") as handle:
        return json.load(handle)


def accuracy_table(metrics: dict) -> str:
    lines = [f"{'question type':<14} {'accuracy':>9} {'chance':>8}"]
    for category in CATEGORIES:
        lines.append(f"{category:<14} {metrics['per_category'][category]:>9.1%} {CHANCE[category]:>8.1%}")
    lines.append(f"{'overall':<14} {metrics['accuracy']:>9.1%}")
    return "\n".join(lines)


def chat_example(checkpoint: str, data: DemoData) -> None:
    """One question through the chat CLI, typed on its standard input as a user would."""
    with open(data.test_questions, encoding="utf-8") as handle:
        question = json.loads(handle.readline())
    with open(data.test_answers, encoding="utf-8") as handle:
        expected = json.loads(handle.readline())["answer"]
    image = os.path.join(data.folder, question["image"])
    print(f"$ echo {question['text']!r} | python -m mvlm.serve.cli --model-path {checkpoint} --image-file {image} "
          "--temperature 0", flush=True)
    run([sys.executable, "-m", "mvlm.serve.cli", "--model-path", checkpoint, "--image-file", image, "--temperature",
         "0", "--max-new-tokens", "8", "--device", "cpu"], "the chat example (mvlm.serve.cli)",
        input=question["text"] + "\n", text=True)
    print(f"(the right answer: {expected})", flush=True)


def run_demo(config: DemoConfig, folder: str, seed: int) -> dict:
    """The whole demo; returns the scorer's metrics plus the time it took (`seconds`)."""
    clock = Clock()
    folder = os.path.abspath(folder)
    prepare_output(folder)
    clock.step(f"writing the synthetic dataset under {folder}/data (seed {seed})")
    data = write_demo_data(os.path.join(folder, "data"), config.train_images, config.caption_images,
                           config.test_per_category, seed=seed, describe_fraction=config.describe_fraction)
    clock.step("making a tokenizer, a tiny Llama-style LM and a tiny CLIP-style tower from scratch")
    llm = save_language_model(os.path.join(folder, "base", "llm"), data.corpus(), config.language_model, seed=seed,
                              control_tokens=config.control_tokens)
    tower = save_vision_tower(os.path.join(folder, "base", "vision_tower"), config.vision_tower, seed=seed)
    checkpoint = train(config, data, llm, tower, folder, clock)
    clock.step("evaluating on the held-out questions: mvlm.eval.model_vqa, then mvlm.eval.score exact")
    metrics = evaluate(checkpoint, data, folder)
    clock.step("asking the trained model through the chat CLI")
    chat_example(checkpoint, data)
    metrics["seconds"] = clock.elapsed()
    clock.step(f"done in {metrics['seconds'] / 60:.1f} minutes. Held-out accuracy per question type:")
    print(accuracy_table(metrics), flush=True)
    return metrics


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m mvlm.demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="playground/data/demo",
                        help="where the data, the models and the results go (a previous demo there is replaced)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the dataset and the models' initialisation")
    parser.add_argument("--threads", type=int, default=THREADS,
                        help=f"CPU threads of every step (default {THREADS}); the same seed and threads give the "
                             "same numbers on a given machine")
    parser.add_argument("--quick", action="store_true",
                        help="a reduced run (fewer samples and steps, about two minutes): checks the pipeline; "
                             "learns clearly, but far less than the full demo")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    global THREADS
    args = build_parser().parse_args(argv)
    if args.threads < 1:
        print(f"mvlm demo: --threads must be at least 1, got {args.threads}", file=sys.stderr)
        return 2
    THREADS = args.threads
    try:
        run_demo(QUICK if args.quick else FULL, args.output, args.seed)
    except DemoError as error:
        print(f"mvlm demo: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
