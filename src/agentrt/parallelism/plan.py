"""Phases 1 and 2: transform operators (partition, replicate), then place and order the sub-operators.

A :class:`Plan` records decisions only; :func:`agentrt.parallelism.comm.lower`
turns it into a program with the communication filled in (phase 3).
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass

from agentrt.parallelism.anno import Split
from agentrt.parallelism.errors import PlanError, ScheduleError
from agentrt.parallelism.graph import Graph, Op
from agentrt.parallelism.schedule import PipeSchedule


@dataclass(frozen=True)
class SubOp:
    """Part ``split.index`` of a partitioned operator, or copy ``index`` of a replicated one."""

    op: str
    index: int
    split: Split | None


class Plan:
    """The decisions of phases 1 and 2 over one captured graph and ``ndevices`` devices."""

    def __init__(self, graph: Graph, ndevices: int) -> None:
        if ndevices < 1:
            raise PlanError(f"the device count must be at least 1, got {ndevices}")
        self.graph = graph
        self.ndevices = ndevices
        self.subops: dict[str, list[SubOp]] = {}
        self.device: dict[SubOp, int] = {}
        self._before: list[tuple[str, str]] = []
        self.pipe: PipeSchedule | None = None  # the micro-batch order of a pipeline plan

    def _op(self, op: Op | str) -> Op:
        return self.graph.op(op) if isinstance(op, str) else op

    # -- phase 1: transformation ------------------------------------------------------------

    def label_of(self, op: Op | str, dim: str | int, idx: int | None = None) -> str:
        """The label that ``dim`` names: a label, or a dimension of input ``idx`` (output 0 if None)."""
        op = self._op(op)
        if isinstance(dim, str):
            if dim not in op.anno.labels:
                raise PlanError(
                    f"{op.name} ({op.target}) has no dimension {dim!r}; it has {op.anno}"
                )
            return dim
        labels = op.anno.outputs[0] if idx is None else op.anno.inputs[idx]
        if not -len(labels) <= dim < len(labels):
            raise PlanError(
                f"{op.name} ({op.target}): dimension {dim} out of range for a {len(labels)}-d tensor"
            )
        return labels[dim]

    def partition(
        self, op: Op | str, dim: str | int, n: int, *, idx: int | None = None
    ) -> list[SubOp]:
        """Split ``op`` into ``n`` sub-operators along ``dim`` (see :meth:`label_of`)."""
        op = self._op(op)
        label = self.label_of(op, dim, idx)
        self._check_free(op)
        if not op.known:
            raise PlanError(
                f"{op.name}: {op.target} has no annotation, so it can only be replicated; register one with agentrt.parallelism.register_op"
            )
        if label in op.anno.frozen:
            raise PlanError(
                f"{op.name} ({op.target}) cannot be split along {label!r}: it is marked unsplittable in {op.anno}"
            )
        if label not in op.anno.reduce and not any(label in out for out in op.anno.outputs):
            raise PlanError(
                f"{op.name}: label {label!r} is neither in an output nor a reduction in {op.anno}"
            )
        for labels, t in zip(
            (*op.anno.inputs, *op.anno.outputs), (*op.inputs, *op.outputs), strict=True
        ):
            for d, (name, size) in enumerate(zip(labels, t.shape, strict=True)):
                if name == label and size % n:
                    raise PlanError(
                        f"{op.name} ({op.target}): dimension {d} of {t.name} has size {size}, which {n} devices do not divide"
                    )
        subops = [SubOp(op.name, i, Split(label, n, i)) for i in range(n)]
        self._place(op, subops)
        return subops

    def replicate(self, op: Op | str, n: int | None = None) -> list[SubOp]:
        """Run ``op`` whole on ``n`` devices (all by default)."""
        op = self._op(op)
        self._check_free(op)
        subops = [SubOp(op.name, i, None) for i in range(self.ndevices if n is None else n)]
        self._place(op, subops)
        return subops

    def _check_free(self, op: Op) -> None:
        if op.name in self.subops:
            raise PlanError(f"{op.name} is already transformed")

    def _place(self, op: Op, subops: list[SubOp]) -> None:
        """Sub-operator i on device i; with more sub-operators than devices (co-shard), consecutive
        ones share a device: ``n * k`` parts put parts ``d*k .. d*k+k-1`` on device ``d``."""
        if len(subops) > self.ndevices and len(subops) % self.ndevices:
            raise PlanError(
                f"{op.name}: {len(subops)} sub-operators are not a multiple of {self.ndevices} devices"
            )
        self.subops[op.name] = subops
        per = max(1, len(subops) // self.ndevices)
        for sub in subops:
            self.device[sub] = sub.index // per

    def transform_of(self, op: Op | str) -> Split | None:
        """The split of ``op`` (None: replicated; untransformed operators are replicated on every device)."""
        subs = self.subops.get(self._op(op).name)
        return subs[0].split if subs else None

    # -- phase 2: space-time scheduling -----------------------------------------------------

    def assign(self, sub: SubOp, device: int) -> None:
        if not 0 <= device < self.ndevices:
            raise PlanError(f"device {device} is outside 0..{self.ndevices - 1}")
        self.device[sub] = device

    def order(self, first: Op | str, *, before: Op | str) -> None:
        """Run ``first`` before ``before`` on every device; refused if ``before`` feeds ``first``."""
        a, b = self._op(first), self._op(before)
        if a.name == b.name or b.name in self._ancestors(a.name):
            raise ScheduleError(
                f"{a.name} cannot run before {b.name}: it consumes what {b.name} produces"
            )
        self._before.append((a.name, b.name))
        self.schedule()  # a cycle among order constraints is refused now, not at run time

    def _ancestors(self, name: str) -> set[str]:
        seen: set[str] = set()
        stack = [name]
        while stack:
            for t in self.graph.op(stack.pop()).inputs:
                producer = self.graph.producer.get(t.name)
                if producer is not None and producer.name not in seen:
                    seen.add(producer.name)
                    stack.append(producer.name)
        return seen

    def schedule(self) -> list[Op]:
        """Program order, changed only as the order constraints demand (a stable topological sort)."""
        ops = self.graph.ops
        index = {op.name: i for i, op in enumerate(ops)}
        preds: dict[str, set[str]] = {op.name: set() for op in ops}
        for op in ops:
            for t in op.inputs:
                producer = self.graph.producer.get(t.name)
                if producer is not None:
                    preds[op.name].add(producer.name)
        for a, b in self._before:
            preds[b].add(a)
        done: set[str] = set()
        result: list[Op] = []
        ready = sorted((index[n] for n, p in preds.items() if not p))
        heapq.heapify(ready)
        waiting = {n: set(p) for n, p in preds.items()}
        succs: dict[str, list[str]] = {op.name: [] for op in ops}
        for n, p in preds.items():
            for q in p:
                succs[q].append(n)
        while ready:
            op = ops[heapq.heappop(ready)]
            result.append(op)
            done.add(op.name)
            for s in succs[op.name]:
                waiting[s].discard(op.name)
                if not waiting[s] and s not in done:
                    heapq.heappush(ready, index[s])
        if len(result) != len(ops):
            stuck = sorted(set(index) - done, key=index.__getitem__)[:3]
            raise ScheduleError(
                f"the order constraints form a cycle (involving {', '.join(stuck)})"
            )
        return result

    def check_order(self, sequence: list[Op]) -> None:
        """Refuse a per-device sequence in which a consumer runs before one of its producers."""
        position = {op.name: i for i, op in enumerate(sequence)}
        for op in sequence:
            for t in op.inputs:
                producer = self.graph.producer.get(t.name)
                if (
                    producer is not None
                    and position.get(producer.name, len(sequence)) >= position[op.name]
                ):
                    raise ScheduleError(
                        f"{op.name} runs before {producer.name}, which produces its input {t.name}"
                    )
