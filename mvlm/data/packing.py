"""`--packing`: a micro-batch as ONE flattened row with no padding, and each sample's boundaries alongside.

The row carries what transformers' `DataCollatorWithFlattening(return_flash_attn_kwargs=True)` gives (it
builds it): `position_ids` restarting at 0 per sample, and `cu_seq_lens_q/k` (int32 cumulative lengths from 0)
with `max_length_q/k`, which the language model passes down to its attention function. One row, because
transformers reads sample boundaries from position ids only for a single row: several packed rows would let
flash-attention attend across samples. Kernels that take boundaries (flash-attention 2, PyTorch's varlen,
mvlm's per-sample SDPA: see `mvlm.model.packed_attention`) then never compute a padded or masked-out score.

The first label of each sample is ignored, because in the row it would be "predicted" from the end of the
previous sample; unpacked, the first label is never predicted either, so packed and unpacked losses agree.
Each sample is at most `--model_max_length` tokens (tokenization truncates); the row is the whole micro-batch.
"""

from __future__ import annotations

from typing import Any

from transformers import DataCollatorWithFlattening

from mvlm.constants import IGNORE_INDEX

_FLATTEN = DataCollatorWithFlattening(return_flash_attn_kwargs=True, separator_id=IGNORE_INDEX)


def packed_batch(features: list[dict[str, Any]]) -> dict[str, Any]:
    """input_ids, labels and position_ids of shape (1, total tokens), and the boundaries, in sample order."""
    return _FLATTEN([{"input_ids": feature["input_ids"], "labels": feature["labels"]} for feature in features])
