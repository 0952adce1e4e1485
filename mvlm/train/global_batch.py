"""Keep a recipe's global batch on any hardware: global batch = per-device batch x processes x accumulation.

Recipes publish the global batch (Mipha's 128, LLaVA's 256), which is what the learning rate was tuned for;
the per-device batch is what fits a GPU, and the process count is whatever the user has. The gradient
accumulation follows from the three, and a global batch they do not divide is refused rather than rounded,
since a silently different batch changes the run.
"""

from __future__ import annotations

from mvlm.errors import FlagError


class GlobalBatchError(FlagError):
    """The per-device batch x the processes does not divide the global batch. Front ends word the advice
    (flags for train.py, environment variables for the scripts) from the attributes."""

    def __init__(self, global_batch: int, per_device_batch: int, processes: int):
        self.global_batch, self.per_device_batch, self.processes = global_batch, per_device_batch, processes
        super().__init__(
            f"the global batch {global_batch} is not a multiple of the per-device batch {per_device_batch} x "
            f"{processes} process(es); pass --global_batch_size, --per_device_train_batch_size or "
            f"--gradient_accumulation_steps, or run on another number of processes"
        )


def positive_integer(name: str, value: int | str) -> int:
    """`value` as a positive integer; a FlagError naming `name` otherwise ('8' and 8 pass; '08', '2.0', 0 fail)."""
    text = str(value)
    if not text.isdigit() or text.startswith("0") or not text.isascii():
        raise FlagError(f"{name} must be a positive integer, got {text!r}")
    return int(text)


def gradient_accumulation_steps(global_batch: int, per_device_batch: int, processes: int) -> int:
    """The accumulation that makes `per_device_batch` on each of `processes` processes a `global_batch`."""
    global_batch = positive_integer("the global batch", global_batch)
    per_device_batch = positive_integer("the per-device batch", per_device_batch)
    processes = positive_integer("the number of processes", processes)
    per_step = per_device_batch * processes
    if global_batch % per_step:
        raise GlobalBatchError(global_batch, per_device_batch, processes)
    return global_batch // per_step
