"""`--group_by_modality_length`: batches of similar length, image samples and text-only samples apart.

Lengths are signed (positive: has images, negative: text-only). Each modality is ordered by length in
shuffled mega-batches, cut into global batches (per-device batch x world size x accumulation), and the
global batches of both modalities are shuffled together, so every step sees one modality at a time
and little padding. With one modality only, this is plain length grouping.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import torch
from torch.utils.data import Sampler


def _length_grouped(indices: list[int], lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[list[int]]:
    """Shuffle, then sort by length inside mega-batches of 50 batches, then cut into batches."""
    if not indices:
        return []
    order = [indices[i] for i in torch.randperm(len(indices), generator=generator).tolist()]
    mega = batch_size * 50
    sorted_order = []
    for start in range(0, len(order), mega):
        sorted_order += sorted(order[start : start + mega], key=lambda index: -abs(lengths[index]))
    return [sorted_order[start : start + batch_size] for start in range(0, len(sorted_order), batch_size)]


def modality_grouped_indices(lengths: Sequence[int], batch_size: int, generator: torch.Generator) -> list[int]:
    """A permutation of range(len(lengths)) in which each run of `batch_size` holds one modality."""
    multimodal = [index for index, length in enumerate(lengths) if length > 0]
    text_only = [index for index, length in enumerate(lengths) if length <= 0]
    batches = _length_grouped(multimodal, lengths, batch_size, generator)
    batches += _length_grouped(text_only, lengths, batch_size, generator)
    # Full batches are shuffled together; the (at most two) short tail batches go last.
    full = [batch for batch in batches if len(batch) == batch_size]
    tails = [batch for batch in batches if len(batch) < batch_size]
    order = torch.randperm(len(full), generator=generator).tolist()
    return [index for position in order for index in full[position]] + [index for batch in tails for index in batch]


class ModalityLengthGroupedSampler(Sampler[int]):
    def __init__(self, lengths: Sequence[int], batch_size: int, seed: int = 0):
        self.lengths = list(lengths)
        self.batch_size = batch_size
        self.seed = seed
        self.epoch = 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return len(self.lengths)

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator()
        generator.manual_seed(self.seed + self.epoch)
        return iter(modality_grouped_indices(self.lengths, self.batch_size, generator))
