"""`--packing`: several samples per row, up to `model_max_length` tokens, so less of each batch is padding.

Attention must stay within each sample. The rows carry `position_ids` that restart at 0 for every
sample and no attention mask: transformers then reads sample boundaries from the position ids (a
block-diagonal causal mask for SDPA/eager, variable-length kernels for flash-attention). The first
label of each sample is ignored, because in a packed row it would be "predicted" from the end of the
previous sample; unpacked, the first label is never predicted either, so packed and unpacked losses agree.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch

from mvlm.constants import IGNORE_INDEX


def pack_rows(lengths: Sequence[int], max_length: int) -> list[list[int]]:
    """Sample indices per row: each sample goes to the first row it fits in (first fit, order kept)."""
    rows: list[list[int]] = []
    room: list[int] = []
    for index, length in enumerate(lengths):
        if length > max_length:
            raise ValueError(f"sample of {length} tokens cannot be packed into rows of {max_length}; "
                             "samples are truncated to --model_max_length before packing")
        for row, free in enumerate(room):
            if length <= free:
                rows[row].append(index)
                room[row] -= length
                break
        else:
            rows.append([index])
            room.append(max_length - length)
    return rows


def packed_tensors(rows: list[list[dict[str, Any]]], pad_token_id: int) -> dict[str, torch.Tensor]:
    """input_ids, labels and position_ids of packed rows, right-padded to the longest row."""
    width = max(sum(len(feature["input_ids"]) for feature in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_token_id, dtype=torch.long)
    labels = torch.full((len(rows), width), IGNORE_INDEX, dtype=torch.long)
    # Padding gets positions restarting at 0 too: a segment of its own, which no sample attends to.
    position_ids = torch.zeros((len(rows), width), dtype=torch.long)
    for row_index, row in enumerate(rows):
        start = 0
        for feature in row:
            length = len(feature["input_ids"])
            input_ids[row_index, start:start + length] = feature["input_ids"]
            labels[row_index, start + 1:start + length] = feature["labels"][1:]
            position_ids[row_index, start:start + length] = torch.arange(length)
            start += length
        position_ids[row_index, start:] = torch.arange(width - start)
    return {"input_ids": input_ids, "labels": labels, "position_ids": position_ids}
