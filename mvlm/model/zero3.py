"""Reading and writing weights that DeepSpeed ZeRO-3 has partitioned across processes.

Under ZeRO-3 every rank holds a slice of each parameter and `param.shape` is (0,); the full shape is
`param.ds_shape`. Code that reads or changes whole weights (growing the embeddings, saving the
projector) must gather them first, on every rank at once (it is a collective). Parameters that are not
partitioned (no DeepSpeed, ZeRO-1/2, or modules built outside `deepspeed.zero.Init`) pass through as
they are, so callers use the same code everywhere.
"""

from __future__ import annotations

import contextlib
from typing import Iterable, Iterator

import torch


def is_partitioned(param: torch.Tensor) -> bool:
    return hasattr(param, "ds_id")


def full_numel(param: torch.Tensor) -> int:
    """The element count of the whole parameter, partitioned or not."""
    return param.ds_numel if is_partitioned(param) else param.numel()


@contextlib.contextmanager
def gathered(params: Iterable[torch.Tensor], modify: bool = False) -> Iterator[None]:
    """Whole tensors of `params` inside the block, on every rank.

    With `modify=True`, what rank 0 writes into them is kept and spread to every rank's partition on
    exit (every rank should write the same). Call it on all ranks; no-op for unpartitioned params.
    """
    partitioned = list({id(param): param for param in params if is_partitioned(param)}.values())
    if not partitioned:
        yield
        return
    import deepspeed

    with deepspeed.zero.GatheredParameters(partitioned, modifier_rank=0 if modify else None):
        yield


@contextlib.contextmanager
def readable(params: Iterable[torch.Tensor]) -> Iterator[None]:
    """Whole tensors of `params` for reading inside a forward pass (all ranks at once, as `gathered`).

    Only partitioned parameters that no module holds gathered right now are gathered: DeepSpeed keeps small
    ("persistent") parameters and those of a running module whole, and refuses to release them at the end.
    """
    with gathered([param for param in params if is_partitioned(param) and param.ds_status.name == "NOT_AVAILABLE"]):
        yield
