"""Peak memory and time of a causal-LM loss + backward: the fused loss (mvlm.model.fused_loss) against the full
logits (the head over every position, then transformers' ForCausalLMLoss), as ratios fused / full.

The case is a LLaVA batch: 4096 positions over a 256k vocabulary (Gemma's, and near Qwen's 152k), half of them
without a label (prompt and image tokens), the head trainable (its weight gradient is counted in both).
What is measured is the memory the loss + backward needs above what existed before it (the hidden states and
the head), gradients of the hidden states and the head included:
- on a CUDA GPU, `torch.cuda.max_memory_allocated()` minus the memory allocated before;
- on the CPU, the process's peak resident set (`ru_maxrss`) minus its resident set before, each variant in a
  fresh process so that one's peak cannot hide the other's.
On a GPU with `liger-kernel` installed the fused variant is Liger's kernel; elsewhere mvlm's chunked one.

    python bench/loss_memory.py                       # CPU: hidden 256 by default, a minute or two on 2 cores
    python bench/loss_memory.py --hidden 2048 --dtype bf16 --repeat 5   # a GPU
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

import torch
import torch.nn.functional as F
from transformers.loss.loss_utils import ForCausalLMLoss

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from mvlm.constants import IGNORE_INDEX  # noqa: E402
from mvlm.model.fused_loss import causal_lm_loss, liger_available  # noqa: E402

VARIANTS = ("full", "fused")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--vocab", type=int, default=256_000)
    parser.add_argument("--tokens", type=int, default=4096)
    parser.add_argument("--hidden", type=int, default=None, help="default: 2048 on a GPU, 256 on the CPU")
    parser.add_argument("--labelled", type=float, default=0.5, help="fraction of positions with a label")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="fp32")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeat", type=int, default=1, help="timed runs per variant (the median is reported)")
    parser.add_argument("--json", default="loss_memory.json", help="where to write the results")
    parser.add_argument("--variant", choices=VARIANTS, help=argparse.SUPPRESS)  # one measurement, in a child
    args = parser.parse_args(argv)
    if args.hidden is None:
        args.hidden = 2048 if args.device.startswith("cuda") else 256
    return args


def inputs(args: argparse.Namespace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Hidden states (1, tokens, hidden), a trainable head (vocab, hidden), labels on the last `labelled` part."""
    generator = torch.Generator().manual_seed(0)
    dtype = DTYPES[args.dtype]
    hidden = (torch.randn(1, args.tokens, args.hidden, generator=generator) * 0.5).to(args.device, dtype)
    weight = (torch.randn(args.vocab, args.hidden, generator=generator) / args.hidden**0.5).to(args.device, dtype)
    labels = torch.randint(0, args.vocab, (1, args.tokens), generator=generator).to(args.device)
    labels[:, : int(args.tokens * (1 - args.labelled))] = IGNORE_INDEX
    return hidden.requires_grad_(), weight.requires_grad_(), labels


def loss_and_backward(variant: str, hidden: torch.Tensor, weight: torch.Tensor, labels: torch.Tensor) -> float:
    if variant == "full":
        loss = ForCausalLMLoss(F.linear(hidden, weight), labels, weight.shape[0])
    else:
        loss = causal_lm_loss(hidden, labels, weight)
    loss.backward()
    return loss.item()


def resident_bytes() -> int:
    with open("/proc/self/statm") as handle:
        return int(handle.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def peak_resident_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux reports KiB


def measure(args: argparse.Namespace) -> dict:
    """One variant in this process: extra peak memory of loss + backward, and its time (median of repeats)."""
    hidden, weight, labels = inputs(args)
    cuda = args.device.startswith("cuda")
    if cuda:
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    else:
        before, setup_peak = resident_bytes(), peak_resident_bytes()
    times, loss = [], None
    for _ in range(args.repeat):
        hidden.grad = weight.grad = None
        start = time.perf_counter()
        loss = loss_and_backward(args.variant, hidden, weight, labels)
        if cuda:
            torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if cuda:
        peak = torch.cuda.max_memory_allocated() - before
        how = "torch.cuda.max_memory_allocated() - memory_allocated() before"
    else:
        peak = peak_resident_bytes() - before
        how = "peak RSS (ru_maxrss) - RSS before, fresh process"
        if setup_peak > before + peak:
            how += " (lower bound: setting up peaked higher)"
    return {"variant": args.variant, "loss": loss, "peak_bytes": peak, "seconds": sorted(times)[len(times) // 2],
            "measured_as": how}


def run_child(args: argparse.Namespace, variant: str) -> dict:
    """`measure` in a fresh process (the CPU's peak RSS only grows; a GPU's allocator keeps its cache)."""
    argv = [sys.executable, os.path.abspath(__file__), "--variant", variant, "--vocab", str(args.vocab),
            "--tokens", str(args.tokens), "--hidden", str(args.hidden), "--labelled", str(args.labelled),
            "--dtype", args.dtype, "--device", args.device, "--repeat", str(args.repeat)]
    completed = subprocess.run(argv, check=True, capture_output=True, text=True)
    return json.loads(completed.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    if args.variant:
        print(json.dumps(measure(args)))
        return {}
    results = {variant: run_child(args, variant) for variant in VARIANTS}
    full, fused = results["full"], results["fused"]
    summary = {
        "case": {key: getattr(args, key) for key in ("vocab", "tokens", "hidden", "labelled", "dtype", "device")},
        "fused_kernel": "liger" if (liger_available() and args.device.startswith("cuda")) else "mvlm chunked",
        "results": results,
        "memory_ratio": fused["peak_bytes"] / full["peak_bytes"],
        "time_ratio": fused["seconds"] / full["seconds"],
        "loss_difference": abs(fused["loss"] - full["loss"]),
    }
    for variant, result in results.items():
        print(f"{variant:6s} peak {result['peak_bytes'] / 2**30:7.3f} GiB   {result['seconds']:8.2f} s   "
              f"loss {result['loss']:.6f}")
    print(f"fused / full: memory {summary['memory_ratio']:.3f}  time {summary['time_ratio']:.3f}  "
          f"({summary['fused_kernel']}; {full['measured_as']}; target memory <= 0.25)")
    with open(args.json, "w") as handle:
        json.dump(summary, handle, indent=2)
    return summary


if __name__ == "__main__":
    main()
