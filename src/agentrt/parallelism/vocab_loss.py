"""Cross-entropy on logits split by vocabulary, without gathering them.

A head split by vocabulary columns leaves each device the logits of its own
slice of the vocabulary. Gathering them to take a cross-entropy moves the
largest activation of a big-vocabulary model and computes the softmax whole
on every device. The loss needs only three numbers per row from each slice:
its largest logit, its sum of ``exp(x - largest)``, and the target's logit,
which one slice holds (the others give 0). One all-gather of those three
rows gives every device the global maximum ``M``, the whole sum of
exponentials (each slice's sum scaled by ``exp(largest - M)``, at most 1, so
nothing overflows) and the target's logit: ``log(sum) + M - target`` per
row, in one synchronizing call where a maximum then a sum would take two.
The gradient of a device's slice is its own ``softmax - one_hot``: the
backward needs no communication.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist

IGNORE_INDEX = -100  # F.cross_entropy's default: such rows add nothing


class _VocabCrossEntropy(torch.autograd.Function):
    """Per-row cross-entropy of ``logits`` (rows, this device's vocabulary slice), targets global."""

    @staticmethod
    def forward(
        ctx: Any, logits: torch.Tensor, target: torch.Tensor, start: int, group: Any
    ) -> torch.Tensor:
        width = logits.shape[-1]
        top = logits.detach().amax(dim=-1)
        exp = (logits.detach() - top.unsqueeze(-1)).exp()
        local = target - start
        mine = (local >= 0) & (local < width)
        local = local.clamp(0, width - 1)
        picked = logits.detach().gather(-1, local.unsqueeze(-1)).squeeze(-1).masked_fill(~mine, 0.0)
        stats = torch.stack([top, exp.sum(dim=-1), picked])
        slices = [torch.empty_like(stats) for _ in range(dist.get_world_size(group))]
        dist.all_gather(slices, stats, group=group)
        tops, sums, picks = torch.stack(slices).unbind(1)  # each (slices, rows)
        peak = tops.amax(dim=0)
        total = (sums * (tops - peak).exp()).sum(dim=0)
        exp *= (top - peak).exp().unsqueeze(-1)  # this slice's exp(x - M)
        valid = target != IGNORE_INDEX
        ctx.save_for_backward(exp, total, local, mine & valid, valid)
        return (total.log() + peak - picks.sum(dim=0)).masked_fill(~valid, 0.0)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None, None]:
        exp, total, local, hit, valid = ctx.saved_tensors
        out = exp / total.unsqueeze(-1)
        rows = torch.arange(out.shape[0])
        out[rows[hit], local[hit]] -= 1.0
        out *= (grad * valid).unsqueeze(-1)
        return out, None, None, None


def vocab_parallel_loss(
    logits: torch.Tensor, labels: torch.Tensor, *, rank: int, group: Any = None
) -> torch.Tensor:
    """``sum of row cross-entropies / labels.numel()`` (as ``NextTokenLoss``) from this device's
    slice ``rank`` of the vocabulary; every device of ``group`` calls it and gets the whole loss.

    The slices are the equal, consecutive chunks a ``Shard`` of the last
    dimension gives, so this device's first vocabulary id is ``rank`` times
    its slice's width.
    """
    rows = logits.reshape(-1, logits.shape[-1])
    start = rank * rows.shape[-1]
    per_row: torch.Tensor = _VocabCrossEntropy.apply(rows, labels.reshape(-1), start, group)  # type: ignore[no-untyped-call]
    return per_row.sum() / labels.numel()
