"""The shipped plans, each a short function over the phase-1 primitives.

Both follow one rule, :func:`follow`: an operator reading a split tensor is
split the same way when its annotation allows, else replicated (and phase 3
gathers what it reads). A plan only says where splitting starts.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.distributed.tensor import Partial, Placement, Replicate, Shard

from agentrt.parallelism.comm import output_layout
from agentrt.parallelism.errors import PlanError
from agentrt.parallelism.graph import Graph, Op
from agentrt.parallelism.plan import Plan

Chooser = Callable[[Op, list[Placement]], str | None]


def follow(
    plan: Plan,
    layouts: dict[str, Placement],
    choose: Chooser | None = None,
    *,
    colocate: Callable[[Op], int] | None = None,
) -> Plan:
    """Transform every operator in program order, splitting along what its inputs are split on.

    ``layouts`` gives the starting layout of placeholders (anything missing is
    replicated); ``choose`` may pick a label first (None: fall back to the rule);
    ``colocate`` may ask for ``k`` parts per device (co-shard) where the size divides.
    """
    n = plan.ndevices
    for op in plan.graph.ops:
        reads = [layouts.get(t.name, Replicate()) for t in op.inputs]
        candidates = [choose(op, reads)] if choose is not None else []
        candidates += [
            op.anno.inputs[i][p.dim] for i, p in enumerate(reads) if isinstance(p, Shard)
        ]
        for label in candidates:
            if label is None or not op.known:
                continue
            k = colocate(op) if colocate is not None else 1
            try:
                plan.partition(op, label, n * k)
                break
            except PlanError:
                if k == 1:
                    continue
            try:
                plan.partition(op, label, n)
                break
            except PlanError:
                continue
        else:
            plan.replicate(op)
        split = plan.transform_of(op)
        for i, t in enumerate(op.outputs):
            layouts[t.name] = output_layout(op, i, split)
    return plan


def data_parallel(graph: Graph, ndevices: int) -> Plan:
    """Split the batch (dimension 0 of every input) over all devices; weights are replicated.

    Phase 3 then all-reduces each weight's gradient, since every device's
    copy of a weight feeds only its share of the batch.
    """
    for t in graph.inputs:
        if not t.shape or t.shape[0] % ndevices:
            raise PlanError(
                f"data parallel: input {t.name} has batch size {t.shape[0] if t.shape else 0}, which {ndevices} devices do not divide"
            )
    return follow(Plan(graph, ndevices), {t.name: Shard(0) for t in graph.inputs})


def _is_weight_linear(op: Op) -> bool:
    return (
        op.target is torch.ops.aten.linear.default
        and op.inputs[1].kind == "param"
        and len(op.inputs[1].shape) == 2
    )


def tensor_parallel(
    graph: Graph,
    ndevices: int,
    *,
    colocate: Callable[[Op], int] | None = None,
    require_linear: bool = True,
) -> Plan:
    """Megatron: a linear reading a whole activation is split by columns, one reading columns by rows.

    Embedding tables are split by vocabulary rows (each device looks up the
    ids it holds; the partial sums are all-reduced).

    Attention heads and the MLP's hidden units then stay split between the
    two; the row-split linear's partial output is all-reduced before the
    residual add, which is Megatron's one all-reduce per block and direction.
    """

    def choose(op: Op, reads: list[Placement]) -> str | None:
        if op.target is torch.ops.aten.embedding.default and op.inputs[0].kind == "param":
            return "V"  # vocabulary-parallel embedding: a partial sum, all-reduced once
        if not _is_weight_linear(op):
            return None
        x = reads[0]
        if isinstance(x, Replicate):
            return "n"
        if isinstance(x, Shard) and x.dim == len(op.inputs[0].shape) - 1:
            return "k"
        return None

    plan = follow(Plan(graph, ndevices), {}, choose, colocate=colocate)
    if require_linear and not any(
        _is_weight_linear(op) and plan.transform_of(op) is not None for op in graph.ops
    ):
        raise PlanError(
            f"tensor parallel: no linear layer of this model splits over {ndevices} devices"
        )
    return plan


def co_sharded(op: Op) -> bool:
    """Whether :func:`coshard` runs ``op`` as several parts per device: attention."""
    return op.target is torch.ops.aten.scaled_dot_product_attention.default


def coshard(graph: Graph, ndevices: int, colocate: int = 2) -> Plan:
    """Megatron tensor parallel where attention runs as ``colocate`` parts per device, one after another.

    Attention's score matrix is the largest activation of a transformer; cut
    in ``ndevices * colocate`` head groups, each device computes (and, in
    training, recomputes in the backward) one group at a time, so its peak
    holds ``1/colocate`` of its share. The layouts, and so the communication,
    are tensor parallelism's.
    """
    plan = tensor_parallel(graph, ndevices, colocate=lambda op: colocate if co_sharded(op) else 1)
    if not any(len(plan.subops.get(op.name, [])) > ndevices for op in graph.ops):
        raise PlanError(
            f"co-shard: no attention of this model splits in {ndevices} x {colocate} head groups"
        )
    return plan


PLANS: dict[str, Callable[[Graph, int], Plan]] = {
    "dp": data_parallel,
    "tp": tensor_parallel,
    "coshard": coshard,
}

__all__ = [
    "PLANS",
    "Partial",
    "co_sharded",
    "coshard",
    "data_parallel",
    "follow",
    "tensor_parallel",
]
