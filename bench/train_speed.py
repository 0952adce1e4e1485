"""Stage-2 training speed of mvlm against transformers' own LLaVA, side by side, on the same weights and batches.

The baseline is what a plain transformers + Trainer user writes: `LlavaForConditionalGeneration` (loaded from
mvlm's export, `mvlm.convert.to_hf`) on right-padded batches with SDPA. Against it run mvlm on the same padded
batches, and mvlm with `--packing` (each micro-batch one flattened row with its sample boundaries), each with
the fused loss (mvlm's default) and with the LM's full loss. Every variant starts from the same weights and
takes the same batches in the same order, with the vision tower frozen (LLaVA-1.5's stage 2).

The data is LLaVA-shaped (bench/llava_shaped_data.py): two thirds image conversations, one third text-only,
one to three turns of varied length. Reported per variant: real (non-padding) tokens/s, step time and peak
memory, each also as a ratio to the baseline; on a GPU, model FLOPs utilisation (MFU) from the FLOPs counted
per step and the GPU's bf16 peak. Packed losses are checked against padded ones at every step.

    python bench/train_speed.py                       # tiny, CPU, fp32, variants step by step in turn
    python bench/train_speed.py --size phi2           # GPU, bf16: Phi-2-shaped 2.7B LM + SigLIP-so400m/384

On the CPU the variants run step by step in turn (one step of each, then the next step of each), so that
other load on a shared machine hits all of them alike, and peak memory is measured in a child process per
variant (growth of its resident set over its steps). On a GPU each variant runs alone in turn, and its peak
is `torch.cuda.max_memory_allocated`. Results are printed and written as JSON (--json).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from typing import Any, Callable

import torch
from huggingface_hub import save_torch_state_dict
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForCausalLM,
    CLIPVisionConfig,
    CLIPVisionModel,
    LlamaConfig,
    LlavaForConditionalGeneration,
    PhiConfig,
    SiglipVisionConfig,
    SiglipVisionModel,
)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from llava_shaped_data import corpus, write_llava_shaped_dataset  # noqa: E402

from mvlm.convert.to_hf import hf_llava_state_dict  # noqa: E402
from mvlm.data.dataset import DataConfig, LazySupervisedDataset, SupervisedCollator  # noqa: E402
from mvlm.data.formats import load_samples  # noqa: E402
from mvlm.demo.models import train_tokenizer  # noqa: E402
from mvlm.model.builder import build_model  # noqa: E402
from mvlm.model.packed_attention import use_packed_attention  # noqa: E402

BASELINE = "transformers-llava-padded"
VARIANTS = {  # name: (model, packing, fused loss)
    BASELINE: ("hf", False, False),
    "mvlm-padded": ("mvlm", False, True),
    "mvlm-padded-full-loss": ("mvlm", False, False),
    "mvlm-packed": ("mvlm", True, True),
    "mvlm-packed-full-loss": ("mvlm", True, False),
}
BF16_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "H800": 989.0, "A100": 312.0, "L40S": 362.0}
"""Dense bf16 peaks (NVIDIA's data sheets, SXM parts), for MFU."""


@dataclasses.dataclass(frozen=True)
class Size:
    """Models built from configs with random weights (nothing is downloaded), and how they are run."""

    llm: Callable[[int], Any]
    tower: Callable[[], Any]
    tower_class: type
    conv_mode: str
    dtype: str
    batch_size: int
    max_length: int
    vocab_size: int


SIZES = {
    "tiny": Size(  # LLaVA-1.5's sequence shape (336 px, 14 px patches: 576 image tokens) on a narrow LM
        llm=lambda vocab: LlamaConfig(vocab_size=vocab, hidden_size=128, intermediate_size=256, num_hidden_layers=4,
                                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=4096),
        tower=lambda: CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                       num_attention_heads=2, image_size=336, patch_size=14),
        tower_class=CLIPVisionModel, conv_mode="vicuna_v1", dtype="fp32", batch_size=8, max_length=2048,
        vocab_size=1000,
    ),
    "phi2": Size(  # Mipha-3B's shapes: Phi-2 (2.7B) + SigLIP-so400m/384 (729 image tokens)
        llm=lambda vocab: PhiConfig(vocab_size=vocab, hidden_size=2560, intermediate_size=10240,
                                    num_hidden_layers=32, num_attention_heads=32, partial_rotary_factor=0.4,
                                    max_position_embeddings=2048),
        tower=lambda: SiglipVisionConfig(hidden_size=1152, intermediate_size=4304, num_hidden_layers=27,
                                         num_attention_heads=16, image_size=384, patch_size=14),
        tower_class=SiglipVisionModel, conv_mode="phi", dtype="bf16", batch_size=8, max_length=2048,
        vocab_size=51200,
    ),
}


# ---------------------------------------------------------------- models and data


def write_base_models(size: Size, root: str) -> tuple[str, str]:
    """An LLM folder (tokenizer trained on the benchmark's corpus) and a tower folder, random weights."""
    tokenizer = train_tokenizer("sentencepiece", True, corpus(), size.vocab_size)
    torch.manual_seed(0)
    llm_folder, tower_folder = os.path.join(root, "llm"), os.path.join(root, "tower")
    AutoModelForCausalLM.from_config(size.llm(max(size.vocab_size, len(tokenizer)))).save_pretrained(llm_folder)
    tokenizer.save_pretrained(llm_folder)
    size.tower_class(size.tower()).save_pretrained(tower_folder)
    return llm_folder, tower_folder


def write_hf_llava(model: Any, folder: str) -> str:
    """mvlm's weights as transformers' LLaVA checkpoint (mvlm.convert.to_hf's layout). A biased LM head (Phi-2)
    loses its bias, which LLaVA's head cannot hold: the same work per step, not the same function."""
    state, config = hf_llava_state_dict(model)
    state.pop("language_model.lm_head.bias", None)
    os.makedirs(folder, exist_ok=True)
    save_torch_state_dict(state, folder, metadata={"format": "pt"})
    with open(os.path.join(folder, "config.json"), "w", encoding="utf-8") as handle:
        json.dump(config, handle)
    return folder


def build_variant(name: str, llm: str, tower: str, hf_folder: str, dtype: torch.dtype, device: torch.device) -> Any:
    """The model of variant `name` on `device`, in training mode, tower frozen, from the shared weights."""
    kind, packing, fused = VARIANTS[name]
    if kind == "hf":
        model = LlavaForConditionalGeneration.from_pretrained(hf_folder, dtype=dtype, attn_implementation="sdpa")
    else:
        torch.manual_seed(0)  # the fresh projector: the same draw as the one exported for the baseline
        model, _, _ = build_model(llm, tower, torch_dtype=dtype, attn_implementation="sdpa")
        model.config.fused_loss = fused
        if packing:
            use_packed_attention(model, device=device)
    parts = model.model if kind == "hf" else model  # transformers' LLaVA keeps its parts under .model
    parts.vision_tower.requires_grad_(False)
    return model.to(device).train()


def batches(size: Size, tokenizer: Any, image_processor: Any, num_image_tokens: int, data: str, folder: str,
            steps: int, packing: bool) -> list[dict]:
    """The first `steps` batches of a seeded shuffle, collated padded or packed (the same samples either way)."""
    dataset = LazySupervisedDataset(load_samples([data]), tokenizer, image_processor, DataConfig(
        conv_mode=size.conv_mode, num_image_tokens=num_image_tokens, image_folder=folder, max_length=size.max_length))
    loader = DataLoader(dataset, batch_size=size.batch_size, shuffle=True, drop_last=True,
                        generator=torch.Generator().manual_seed(0),
                        collate_fn=SupervisedCollator(tokenizer.pad_token_id, packing=packing))
    taken: list[dict] = []
    while len(taken) < steps:
        for batch in loader:
            taken.append(batch)
            if len(taken) == steps:
                break
    return taken


def real_tokens(batch: dict) -> int:
    return int(batch["attention_mask"].sum()) if "attention_mask" in batch else int(batch["input_ids"].numel())


# ---------------------------------------------------------------- running


class Runner:
    """One variant: its model, optimizer and batches, stepped on demand; keeps times and losses."""

    def __init__(self, name: str, model: Any, batches: list[dict], device: torch.device):
        self.name, self.model, self.batches, self.device = name, model, batches, device
        self.optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-5)
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, index: int, timed: bool) -> None:
        batch = {key: value.to(self.device) if torch.is_tensor(value) else value  # max_length_q/k are ints
                 for key, value in self.batches[index].items()}
        _sync(self.device)
        start = time.perf_counter()
        loss = self.model(**batch).loss
        loss.backward()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        if timed:
            self.times.append(time.perf_counter() - start)
        self.losses.append(loss.item())


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def peak_rss_growth_gib(args: argparse.Namespace, name: str) -> float:
    """Peak memory of variant `name` on the CPU: run it alone in a child process, report its RSS growth."""
    command = [sys.executable, os.path.abspath(__file__), "--size", args.size, "--device", "cpu", "--child", name,
               "--steps", "3", "--warmup", "0", "--workdir", args.workdir]
    if args.batch_size:
        command += ["--batch-size", str(args.batch_size)]
    result = subprocess.run(command, capture_output=True, text=True, check=True)
    return float(result.stdout.strip().splitlines()[-1])


def child_memory(args: argparse.Namespace, setup: dict) -> None:
    """(In the child) build one variant, then print the peak growth of its resident set over a few steps, GiB.

    The resident set is sampled every millisecond while the steps run: the process's lifetime peak
    (ru_maxrss) would include building the models and the data."""
    device = torch.device("cpu")
    runner = Runner(args.child, build_variant(args.child, *setup["models"], torch.float32, device),
                    setup["batches"][VARIANTS[args.child][1]], device)
    setup.clear()
    before = _rss_gib()
    peak = [before]
    done = threading.Event()

    def sample() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_gib())
            time.sleep(0.001)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    for index in range(args.steps):
        runner.step(index, timed=False)
    done.set()
    sampler.join()
    print(max(peak[0], _rss_gib()) - before)


def _rss_gib() -> float:
    with open("/proc/self/statm", encoding="ascii") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**30


def flops_per_step(model: Any, batch: dict, num_image_tokens: int) -> float:
    """Model FLOPs of one training step: 6 x LM parameters (embeddings excluded) per real token, causal attention
    (6 x layers x width x length^2 per sample, half of full), the frozen tower's forward (2 x parameters per
    patch, its attention 4 x layers x width x patches^2) and the projector (6 x parameters per image token)."""
    text = model.config.text_config
    vision = model.config.vision_config
    lm_params = sum(p.numel() for n, p in model.language_model.named_parameters() if "embed_tokens" not in n)
    tower_params = sum(p.numel() for p in model.vision_tower.parameters())
    projector_params = sum(p.numel() for p in model.multi_modal_projector.parameters())
    lengths = _sample_lengths(batch)
    tokens = sum(lengths)
    images = int(batch["pixel_values"].shape[0]) if "pixel_values" in batch else 0
    patches = num_image_tokens
    attention = 6 * text.num_hidden_layers * text.hidden_size * sum(length**2 for length in lengths) / 2
    tower = images * (2 * tower_params * patches + 4 * vision.num_hidden_layers * vision.hidden_size * patches**2)
    return 6 * lm_params * tokens + attention + tower + 6 * projector_params * images * num_image_tokens


def _sample_lengths(batch: dict) -> list[int]:
    if "cu_seq_lens_q" in batch:
        bounds = batch["cu_seq_lens_q"].tolist()
        return [end - start for start, end in zip(bounds, bounds[1:])]
    return batch["attention_mask"].sum(dim=1).tolist()


def gpu_peak_tflops(device: torch.device, given: float | None) -> float | None:
    if given is not None or device.type != "cuda":
        return given
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in BF16_PEAK_TFLOPS.items() if key in name), None)


# ---------------------------------------------------------------- the benchmark


def prepare(args: argparse.Namespace, size: Size, dtype: torch.dtype) -> dict:
    """Models, the export for the baseline, data and batches, under args.workdir (made once, reused by children)."""
    root = args.workdir
    llm, tower = os.path.join(root, "llm"), os.path.join(root, "tower")
    hf_folder = os.path.join(root, "hf-llava")
    if not os.path.isdir(llm):
        write_base_models(size, root)
    torch.manual_seed(0)  # the fresh projector: the same draw as in build_variant
    model, tokenizer, processor = build_model(llm, tower, torch_dtype=dtype)
    if not os.path.isdir(hf_folder):
        write_hf_llava(model, hf_folder)
    data = os.path.join(root, "data")
    json_path = os.path.join(data, "llava_shaped.json")
    if not os.path.isfile(json_path):
        side = (getattr(processor, "crop_size", None) or processor.size)["height"]
        write_llava_shaped_dataset(data, size.batch_size * (args.warmup + args.steps) * 2, model.num_image_tokens,
                                   side, seed=0)
    total = args.warmup + args.steps
    return {
        "models": (llm, tower, hf_folder),
        "batches": {packing: batches(size, tokenizer, processor, model.num_image_tokens, json_path, data, total,
                                     packing) for packing in (False, True)},
        "num_image_tokens": model.num_image_tokens,
        "flops_model": model,
    }


def run_in_turn(names: list[str], setup: dict, args: argparse.Namespace, dtype: torch.dtype,
                device: torch.device) -> dict[str, Runner]:
    """CPU: all variants built at once, then step by step in turn."""
    runners = {name: Runner(name, build_variant(name, *setup["models"], dtype, device),
                            setup["batches"][VARIANTS[name][1]], device) for name in names}
    for index in range(args.warmup + args.steps):
        for runner in runners.values():
            runner.step(index, timed=index >= args.warmup)
    return runners


def run_one_by_one(names: list[str], setup: dict, args: argparse.Namespace, dtype: torch.dtype,
                   device: torch.device) -> tuple[dict[str, Runner], dict[str, float]]:
    """GPU: each variant alone (a 2.7B model and its optimizer fill much of the card), its peak memory measured."""
    runners, peaks = {}, {}
    for name in names:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
        runner = Runner(name, build_variant(name, *setup["models"], dtype, device),
                        setup["batches"][VARIANTS[name][1]], device)
        for index in range(args.warmup + args.steps):
            runner.step(index, timed=index >= args.warmup)
        peaks[name] = torch.cuda.max_memory_allocated(device) / 2**30
        runner.model = runner.optimizer = None
        runners[name] = runner
    return runners, peaks


def report(runners: dict[str, Runner], peaks: dict[str, float], setup: dict, args: argparse.Namespace,
           device: torch.device) -> dict:
    measured = range(args.warmup, args.warmup + args.steps)
    tokens = {packing: sum(real_tokens(setup["batches"][packing][i]) for i in measured) for packing in (False, True)}
    assert tokens[False] == tokens[True], "padded and packed batches must hold the same samples"
    flops = sum(flops_per_step(setup["flops_model"], setup["batches"][False][i], setup["num_image_tokens"])
                for i in measured)
    peak_tflops = gpu_peak_tflops(device, args.peak_tflops)
    rows = {}
    for name, runner in runners.items():
        seconds = sum(runner.times)
        row = {"tokens_per_s": tokens[False] / seconds, "step_s": seconds / len(runner.times),
               "peak_memory_gib": peaks.get(name)}
        if peak_tflops:
            row["mfu"] = flops / seconds / (peak_tflops * 1e12)
        rows[name] = row
    base = rows[BASELINE] if BASELINE in rows else next(iter(rows.values()))
    for row in rows.values():
        row["tokens_per_s_ratio"] = row["tokens_per_s"] / base["tokens_per_s"]
        row["step_s_ratio"] = row["step_s"] / base["step_s"]
        if row["peak_memory_gib"] is not None and base["peak_memory_gib"]:
            row["peak_memory_ratio"] = row["peak_memory_gib"] / base["peak_memory_gib"]
    checks = {}
    for fused in (True, False):
        padded, packed = ("mvlm-padded", "mvlm-packed") if fused else ("mvlm-padded-full-loss", "mvlm-packed-full-loss")
        if padded in runners and packed in runners:
            diff = max(abs(a - b) for a, b in zip(runners[padded].losses, runners[packed].losses))
            checks[f"max_loss_difference_{packed}_vs_{padded}"] = diff
    first_losses = [runner.losses[0] for runner in runners.values()]
    return {"size": args.size, "device": _device_name(device), "dtype": SIZES[args.size].dtype,
            "batch_size": args.batch_size or SIZES[args.size].batch_size,
            "initial_loss_difference_vs_baseline": max(first_losses) - min(first_losses), "warmup_steps": args.warmup, "steps": args.steps,
            "real_tokens_measured": tokens[False], "bf16_peak_tflops": peak_tflops, "variants": rows,
            "loss_checks": checks}


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads)"


def print_table(result: dict) -> None:
    print(f"\n{result['size']} on {result['device']}, {result['dtype']}, batch {result['batch_size']}, "
          f"{result['steps']} measured steps ({result['real_tokens_measured']} real tokens)")
    print(f"{'variant':<26} {'tokens/s':>10} {'ratio':>7} {'step s':>8} {'ratio':>7} {'peak GiB':>9} {'ratio':>7}"
          f"{'  MFU' if result['bf16_peak_tflops'] else ''}")
    for name, row in result["variants"].items():
        peak = row["peak_memory_gib"]
        line = (f"{name:<26} {row['tokens_per_s']:>10.1f} {row['tokens_per_s_ratio']:>6.2f}x {row['step_s']:>8.3f} "
                f"{row['step_s_ratio']:>6.2f}x {peak if peak is not None else float('nan'):>9.3f} "
                f"{row.get('peak_memory_ratio', float('nan')):>6.2f}x")
        if "mfu" in row:
            line += f" {row['mfu']:>5.1%}"
        print(line)
    print(f"first-step losses of all variants within {result['initial_loss_difference_vs_baseline']:.2e} "
          "(the same weights and batch)")
    for check, value in result["loss_checks"].items():
        print(f"{check}: {value:.2e}")


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=sorted(SIZES), default="tiny")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated, of: {', '.join(VARIANTS)}")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--steps", type=int, default=12)
    parser.add_argument("--batch-size", type=int, default=None, help="default: the size's (8)")
    parser.add_argument("--peak-tflops", type=float, default=None, help="the GPU's bf16 peak, if not an H100/H200/A100")
    parser.add_argument("--no-memory", action="store_true", help="CPU: skip the per-variant memory runs")
    parser.add_argument("--json", default=None, help="write the results here")
    parser.add_argument("--workdir", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    names = args.variants.split(",")
    unknown = [name for name in names if name not in VARIANTS]
    if unknown:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    size = SIZES[args.size]
    if args.batch_size:
        size = dataclasses.replace(size, batch_size=args.batch_size)
    device = torch.device(args.device)
    dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[size.dtype]
    with tempfile.TemporaryDirectory() as scratch:
        args.workdir = args.workdir or scratch
        setup = prepare(args, size, dtype)
        if args.child:
            child_memory(args, setup)
            return None
        if device.type == "cuda":
            runners, peaks = run_one_by_one(names, setup, args, dtype, device)
        else:
            runners = run_in_turn(names, setup, args, dtype, device)
            peaks = {} if args.no_memory else {name: peak_rss_growth_gib(args, name) for name in names}
        result = report(runners, peaks, setup, args, device)
    print_table(result)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as handle:
            json.dump(result, handle, indent=2)
    return result


if __name__ == "__main__":
    main()
