"""Causal-LM cross-entropy straight from the last hidden states: labelled positions only, never the full logits.

A LLaVA batch of 4096 tokens over a 256k vocabulary has a billion logits: 4 GB in fp32, and the softmax
and its gradient as much again, although about half the positions (prompt, image) carry no label. Here
only the labelled positions go through the head, a chunk of rows at a time, and each chunk's gradients
(w.r.t. the hidden states, the weight and the bias) are computed right away in the forward pass, as
Liger's kernel does: nothing of vocabulary size outlives its chunk, and backward only rescales. That keeps
peak memory lower than checkpointing each chunk (`torch.utils.checkpoint`), which recomputes every chunk's
logits in backward (a fourth matrix product) and lets autograd sum one vocabulary-by-hidden weight
gradient per chunk into another of the same size. On a CUDA GPU with `liger-kernel` installed, Liger's
Triton kernel does the same work.

The reduction is transformers' `ForCausalLMLoss`: labels shifted left by one, the mean over labelled
tokens, or the sum divided by `num_items_in_batch` when Trainer passes it (gradient accumulation).
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F
from torch.autograd.function import once_differentiable

from mvlm.constants import IGNORE_INDEX
from mvlm.model.zero3 import readable

try:  # optional: `pip install liger-kernel`, used on CUDA only
    from liger_kernel.transformers.functional import liger_fused_linear_cross_entropy
except ImportError:
    liger_fused_linear_cross_entropy = None

CHUNK_LOGITS_BYTES = 256 * 2**20
"""fp32 logits of one chunk at most this big (a 256k vocabulary: 256 rows); the forward holds about three such."""


def causal_lm_loss(
    hidden_states: torch.Tensor,
    labels: torch.Tensor | None,
    weight: torch.Tensor,
    bias: torch.Tensor | None = None,
    softcap: float | None = None,
    num_items_in_batch: torch.Tensor | int | None = None,
    shift_labels: torch.Tensor | None = None,
    chunk_size: int | None = None,
) -> torch.Tensor:
    """ForCausalLMLoss of `softcap * tanh((hidden_states @ weight.T + bias) / softcap)` without those logits.

    `hidden_states` is (batch, seq, hidden), `labels` (batch, seq) with IGNORE_INDEX where no loss is
    wanted (or `shift_labels`, already shifted). Only positions with a label reach the head.
    """
    if shift_labels is None:
        shift_labels = F.pad(labels, (0, 1), value=IGNORE_INDEX)[..., 1:]
    shift_labels = shift_labels.to(hidden_states.device)
    labelled = shift_labels != IGNORE_INDEX
    rows = hidden_states[labelled]
    targets = shift_labels[labelled]
    denominator = labelled.sum() if num_items_in_batch is None else num_items_in_batch
    with readable([weight] + ([bias] if bias is not None else [])):  # whole weights under ZeRO-3
        rows = rows.to(weight.dtype)
        if liger_fused_linear_cross_entropy is not None and rows.is_cuda and rows.shape[0] > 0:
            total = liger_fused_linear_cross_entropy(rows, weight, targets, bias=bias, reduction="sum",
                                                     softcap=softcap)
            total = total[0] if isinstance(total, tuple) else total
            if torch.is_tensor(denominator):
                denominator = denominator.to(total.device)
            return total.float() / denominator
        chunk_size = chunk_size or max(1, CHUNK_LOGITS_BYTES // (4 * weight.shape[0]))
        return ChunkedLinearCrossEntropy.apply(rows, weight, bias, targets, softcap, float(denominator), chunk_size)


def head_logits(
    rows: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, softcap: float | None
) -> torch.Tensor:
    """fp32 logits as the fused loss sees them: the head (in its dtype), upcast, then soft-capped."""
    logits = F.linear(rows.to(weight.dtype), weight, bias).float()
    if softcap is None:
        return logits
    return torch.tanh(logits / softcap) * softcap


class ChunkedLinearCrossEntropy(torch.autograd.Function):
    """Cross-entropy of `rows @ weight.T + bias` summed and divided by `denominator`, chunk by chunk.

    The gradients are computed in forward, already divided, so that backward allocates nothing of
    vocabulary size: it only multiplies them, in place, by the incoming gradient when that is not 1.
    """

    @staticmethod
    def forward(ctx, rows, weight, bias, targets, softcap, denominator, chunk_size):
        needs_rows, needs_weight, needs_bias = ctx.needs_input_grad[:3]
        grads = _Gradients(
            rows=torch.empty_like(rows) if needs_rows else None,
            weight=torch.zeros_like(weight) if needs_weight else None,
            bias=torch.zeros_like(bias) if needs_bias else None,
            scale=1.0 / denominator if denominator else 0.0,  # no label in the whole batch: 0/0, as transformers
        )
        total = torch.zeros((), dtype=torch.float32, device=rows.device)
        with torch.autocast(rows.device.type, enabled=False):  # the head's own dtype, as for the full logits
            for start in range(0, rows.shape[0], chunk_size):
                chunk = slice(start, start + chunk_size)
                total += _chunk_loss(rows[chunk], weight, bias, targets[chunk], softcap, grads, chunk)
        ctx.save_for_backward(grads.rows, grads.weight, grads.bias)
        ctx.scaled_by = 1.0
        return total / denominator

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_output):
        grads = ctx.saved_tensors
        if ctx.scaled_by == 0.0:
            raise RuntimeError("a second backward through a fused loss whose first incoming gradient was 0")
        factor = float(grad_output) / ctx.scaled_by
        if factor != 1.0:  # in place: no second weight-sized tensor (Trainer's own backward passes 1)
            for grad in grads:
                if grad is not None:
                    grad.mul_(factor)
            ctx.scaled_by = float(grad_output)  # a second backward (retain_graph) rescales from here
        return (*grads, None, None, None, None)


@dataclasses.dataclass
class _Gradients:
    """Gradient buffers filled chunk by chunk (None where no gradient is wanted), and their common factor."""

    rows: torch.Tensor | None
    weight: torch.Tensor | None
    bias: torch.Tensor | None
    scale: float

    @property
    def wanted(self) -> bool:
        return any(grad is not None for grad in (self.rows, self.weight, self.bias))


def _chunk_loss(
    chunk: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    targets: torch.Tensor,
    softcap: float | None,
    grads: _Gradients,
    rows: slice,
) -> torch.Tensor:
    """Summed cross-entropy of one chunk; adds its gradients to `grads` (rows `rows` of grads.rows)."""
    logits = F.linear(chunk, weight, bias).float()
    capped_tanh = None
    if softcap is not None:
        capped_tanh = torch.tanh(logits.div_(softcap))
        logits = capped_tanh * softcap
    log_normalizer = torch.logsumexp(logits, dim=-1)
    loss = (log_normalizer - logits.gather(1, targets[:, None]).squeeze(1)).sum()
    if not grads.wanted:
        return loss
    grad = logits.sub_(log_normalizer[:, None]).exp_()  # the softmax, in place
    grad[torch.arange(grad.shape[0], device=grad.device), targets] -= 1.0
    if capped_tanh is not None:  # d(softcap * tanh(z / softcap)) / dz = 1 - tanh(z / softcap)^2
        grad.mul_(capped_tanh.square_().neg_().add_(1.0))
    grad = grad.mul_(grads.scale).to(weight.dtype)
    if grads.rows is not None:
        torch.matmul(grad, weight, out=grads.rows[rows])
    if grads.weight is not None:
        grads.weight.addmm_(grad.T, chunk)
    if grads.bias is not None:
        grads.bias.add_(grad.sum(dim=0))
    return loss


def liger_available() -> bool:
    """Whether Liger's kernel is importable (it then serves CUDA tensors)."""
    return liger_fused_linear_cross_entropy is not None

