"""Analytic operation counts per operator, from its annotation and traced shapes.

Used to balance pipeline stages and as the cost model's fallback where no
measured time exists: an operator's iteration space is the product of the
sizes of its labels; one with a reduction does a multiply and an add per
point.
"""

from __future__ import annotations

import torch

from agentrt.parallelism.graph import Op


def label_sizes(op: Op) -> dict[str, int]:
    sizes: dict[str, int] = {}
    for labels, t in zip(
        (*op.anno.inputs, *op.anno.outputs), (*op.inputs, *op.outputs), strict=True
    ):
        for label, size in zip(labels, t.shape, strict=True):
            sizes[label] = max(sizes.get(label, 1), size)
    return sizes


def op_flops(op: Op) -> float:
    """Floating-point operations of one call of ``op`` (forward)."""
    if op.target is torch.ops.aten.scaled_dot_product_attention.default:
        q, k, v = (t.shape for t in op.inputs[:3])
        batch = 1
        for size in q[:-2]:
            batch *= size
        return 2.0 * batch * q[-2] * k[-2] * (q[-1] + v[-1])
    out = sum(_numel(t.shape) for t in op.outputs)
    if op.target is torch.ops.aten.embedding.default:
        # a lookup copies its rows; the vocabulary label is a reduction only in how it splits
        return float(out)
    if not op.known or not op.anno.reduce:
        return float(out)
    space = 1.0
    for size in label_sizes(op).values():
        space *= size
    return 2.0 * space


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for size in shape:
        n *= size
    return n
