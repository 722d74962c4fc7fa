"""Phase 3: the communication between producer and consumer layouts, found as a cheapest path.

Every tensor a sub-operator reads has a layout on the device mesh (a DTensor
placement on a 1-D mesh: ``Shard(d)``, ``Replicate()``, ``Partial()``), and so
does what its producer wrote. Between the two we insert the cheapest sequence
of collectives, by Dijkstra over layouts with an alpha-beta cost per step,
and the backward gets its own path, from the layout the consumer's gradient
comes in to the layout the producer's gradient must have.
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from torch.distributed.tensor import Partial, Placement, Replicate, Shard

from agentrt.parallelism.errors import PlanError
from agentrt.parallelism.graph import Op
from agentrt.parallelism.plan import Plan
from agentrt.parallelism.tensor import PTensor, covers, vtensors


@dataclass(frozen=True)
class CostModel:
    """Seconds per collective: ``alpha`` per message round plus bytes over ``beta`` (ring algorithms).

    The defaults are of the order of gloo on one host's loopback; fit them to a
    cluster with measured collectives for a plan meant to run there.
    """

    alpha: float = 50e-6
    beta: float = 2e9  # bytes/s between devices
    local: float = 20e9  # bytes/s of a local copy
    # Measured lines ``(primitive, seconds per call, seconds per byte)`` for groups of
    # ``measured_n`` devices: the runtime's whole cost of one call (its Python path and
    # DTensor's included), which the wire's alpha and beta alone miss on a host like this.
    measured: tuple[tuple[str, float, float], ...] = ()
    measured_n: int = 0
    # Seconds a rank waits at each synchronizing call for the slowest other rank (the
    # ranks' compute between calls does not end together on shared cores); 0 on a profile.
    sync: float = 0.0

    def _line(self, prim: str, n: int) -> tuple[float, float] | None:
        for name, fixed, per_byte in self.measured:
            # a point-to-point transfer is between two ranks whatever the group measured
            if name == prim and (n == self.measured_n or prim == "send/recv"):
                return fixed, per_byte
        return None

    def seconds(self, prim: str, nbytes: int, n: int) -> float:
        """One call of ``prim`` on a tensor of ``nbytes`` (whole) over ``n`` devices."""
        if prim == "local-vchunk":
            return nbytes / n / self.local
        if prim == "local-chunk" and self._line(prim, n) is None:
            return nbytes / n / self.local
        wait = 0.0 if prim.startswith("local") else self.sync
        # reduce-scatter moves what all-gather moves; all-to-all one n-th of it
        line = self._line(prim, n) or self._line(_LIKE.get(prim, prim), n)
        if line is not None:
            return wait + line[0] + line[1] * (nbytes / n if prim == "all-to-all" else nbytes)
        frac = (n - 1) / n
        prim = prim.removesuffix("/plain")
        if prim == "all-reduce":
            return wait + 2 * (n - 1) * self.alpha + 2 * frac * nbytes / self.beta
        if prim in ("all-gather", "reduce-scatter"):
            return wait + (n - 1) * self.alpha + frac * nbytes / self.beta
        if prim == "all-to-all":
            return wait + (n - 1) * self.alpha + frac * nbytes / n / self.beta
        if prim == "send/recv":
            return wait + self.alpha + nbytes / self.beta
        if prim == "broadcast":
            return wait + (n - 1) * self.alpha + nbytes / self.beta
        raise ValueError(f"unknown primitive {prim!r}")


_LIKE = {"reduce-scatter": "all-gather", "all-to-all": "all-gather"}


@dataclass(frozen=True)
class Step:
    prim: str
    src: Placement
    dst: Placement


def _moves(src: Placement, shape: tuple[int, ...], n: int) -> list[tuple[str, Placement]]:
    """The one-collective moves out of ``src`` (the RVD transitions of the paper)."""
    shards = [Shard(d) for d, size in enumerate(shape) if size % n == 0]
    if isinstance(src, Replicate):
        return [("local-chunk", s) for s in shards] + [("local-vchunk", Partial())]
    if isinstance(src, Partial):
        return [("all-reduce", Replicate())] + [("reduce-scatter", s) for s in shards]
    if isinstance(src, Shard):
        return [("all-gather", Replicate())] + [("all-to-all", s) for s in shards if s != src]
    raise TypeError(f"unsupported placement {src!r}")


def cheapest_path(
    src: Placement, dst: Placement, tensor: PTensor, n: int, cost: CostModel
) -> tuple[list[Step], float]:
    """Dijkstra over layouts; ties go to fewer steps."""
    if src == dst or n == 1:
        return [], 0.0
    tick = itertools.count()
    best: dict[Placement, float] = {src: 0.0}
    queue: list[tuple[float, int, Placement, list[Step]]] = [(0.0, next(tick), src, [])]
    while queue:
        spent, _, here, path = heapq.heappop(queue)
        if here == dst:
            return path, spent
        if spent > best.get(here, float("inf")):
            continue
        for prim, there in _moves(here, tensor.shape, n):
            total = spent + cost.seconds(prim, tensor.nbytes, n)
            if total < best.get(there, float("inf")):
                best[there] = total
                heapq.heappush(queue, (total, next(tick), there, [*path, Step(prim, here, there)]))
    raise PlanError(f"no communication takes {tensor.name} from {src} to {dst} over {n} devices")


def grad_layout(fwd: Placement, *, split_consumer: bool) -> Placement:
    """The layout a gradient has where a tensor of layout ``fwd`` is read or written.

    A shard's gradient is the same shard. A partial sum's gradient is the whole
    gradient. A replicated tensor read by a *split* operator gets only that
    part's contribution on each device: a partial gradient.
    """
    if isinstance(fwd, Shard):
        return fwd
    if isinstance(fwd, Partial):
        return Replicate()
    return Partial() if split_consumer else Replicate()


@dataclass(frozen=True)
class Adapter:
    """The communication one tensor needs before a consumer reads it, forward and backward."""

    tensor: PTensor
    src: Placement
    dst: Placement
    grad_src: Placement  # where the consumer's gradient arrives
    grad_dst: Placement  # what the producer's gradient must be
    forward: tuple[Step, ...]
    backward: tuple[Step, ...]
    seconds: float

    @property
    def key(self) -> tuple[str, Placement, Placement]:
        return (self.tensor.name, self.dst, self.grad_src)

    def __str__(self) -> str:
        steps = " -> ".join(s.prim for s in self.forward) or "none"
        back = " -> ".join(s.prim for s in self.backward) or "none"
        return f"{self.tensor.name}: {self.src} => {self.dst} [{steps}] (backward [{back}])"


@dataclass
class Program:
    """A lowered plan: the same instruction list runs on every rank (SPMD)."""

    plan: Plan
    ndevices: int
    cost: CostModel
    storage: dict[str, Placement]  # placeholder -> how each device holds it
    layouts: dict[str, Placement]  # activation -> the layout its producer writes
    steps: list[tuple[Op, list[Adapter]]] = field(default_factory=list)
    outputs: list[Adapter] = field(default_factory=list)

    @property
    def adapters(self) -> list[Adapter]:
        """Each distinct adapter once: consumers reading a tensor in the same layout share one."""
        unique: dict[tuple[str, Placement, Placement], Adapter] = {}
        for a in [a for _, ads in self.steps for a in ads] + self.outputs:
            unique.setdefault(a.key, a)
        return list(unique.values())

    def comm_seconds(self, *, train: bool = False) -> float:
        total = 0.0
        for a in self.adapters:
            total += a.seconds
            if train:
                total += sum(
                    self.cost.seconds(s.prim, a.tensor.nbytes, self.ndevices) for s in a.backward
                )
        return total

    def collectives(self, *, train: bool = False) -> dict[str, int]:
        counts: dict[str, int] = {}
        for a in self.adapters:
            steps = list(a.forward) + (list(a.backward) if train else [])
            for s in steps:
                if not s.prim.startswith("local"):
                    counts[s.prim] = counts.get(s.prim, 0) + 1
        return counts

    def param_bytes(self) -> int:
        """Bytes of parameters and buffers one device holds."""
        total = 0
        for name, placement in self.storage.items():
            t = self.plan.graph.tensors[name]
            if t.kind != "input":
                total += t.nbytes // self.ndevices if isinstance(placement, Shard) else t.nbytes
        return total

    def check(self) -> None:
        """Static check: every producer layout rebuilds its pTensor and every path ends at its consumer's layout."""
        for a in self.adapters:
            if not covers(vtensors(a.tensor, a.src, self.ndevices)):
                raise PlanError(f"the pieces of {a.tensor.name} in {a.src} do not rebuild it")
            end = a.forward[-1].dst if a.forward else a.src
            if end != a.dst:
                raise PlanError(
                    f"the communication for {a.tensor.name} ends in {end}, its consumer reads {a.dst}"
                )


def input_layout(op: Op, position: int, split: object) -> tuple[Placement, Placement]:
    """(forward, gradient) layout in which ``op`` reads its ``position``-th tensor input."""
    if split is None:
        return Replicate(), Replicate()
    label = split.label  # type: ignore[attr-defined]
    labels = op.anno.inputs[position]
    if label in labels:
        return Shard(labels.index(label)), Shard(labels.index(label))
    if label in op.anno.reduce and position in op.anno.additive:
        return Partial(), Replicate()
    return Replicate(), Partial()


def output_layout(op: Op, position: int, split: object) -> Placement:
    if split is None:
        return Replicate()
    label = split.label  # type: ignore[attr-defined]
    labels = op.anno.outputs[position]
    if label in labels:
        return Shard(labels.index(label))
    return Partial()  # a reduction label the output lacks: partition() refuses a spatial one


def lower(
    plan: Plan, cost: CostModel | None = None, *, outputs: Sequence[Placement] | None = None
) -> Program:
    """Phase 3: fill in the communication of ``plan`` and return the per-rank program.

    ``outputs``: the layout each graph output is handed over in (and its
    gradient comes back in); whole on every device unless given, as when a
    vocabulary-split loss reads the logits where the head wrote them.
    """
    cost = cost or CostModel()
    graph, n = plan.graph, plan.ndevices
    if plan.pipe is not None:
        raise PlanError(
            "a pipeline plan is lowered stage by stage: agentrt.parallelism.pipeline.stages"
        )
    for name, subs in plan.subops.items():
        per = max(1, len(subs) // n)
        if len(subs) != n * per or any(plan.device[s] != s.index // per for s in subs):
            raise PlanError(
                f"{name}: this runtime runs every operator on all {n} devices, its k*n parts (co-shard) "
                f"k consecutive ones per device; got {[plan.device[s] for s in subs]}"
            )
    order = plan.schedule()
    plan.check_order(order)
    reads: dict[str, list[Placement]] = {}
    for op in order:
        split = plan.transform_of(op)
        for i, t in enumerate(op.inputs):
            reads.setdefault(t.name, []).append(input_layout(op, i, split)[0])
    storage: dict[str, Placement] = {}
    for name, t in graph.tensors.items():
        if t.kind in ("param", "buffer", "constant"):
            wanted = set(reads.get(name, [Replicate()]))
            only = next(iter(wanted)) if len(wanted) == 1 else Replicate()
            storage[name] = Replicate() if isinstance(only, Partial) else only
    for t in graph.inputs:  # user inputs, or what a pipeline stage receives: whole on every device
        storage[t.name] = Replicate()
    program = Program(plan, n, cost, storage, {})
    grads = _differentiable(order, graph.tensors.values(), graph.inputs)
    layouts = dict(storage)
    for op in order:
        split = plan.transform_of(op)
        adapters = []
        for i, t in enumerate(op.inputs):
            dst, grad_src = input_layout(op, i, split)
            adapters.append(_adapter(t, layouts[t.name], dst, grad_src, n, cost, t.name in grads))
        program.steps.append((op, adapters))
        for i, t in enumerate(op.outputs):
            layouts[t.name] = output_layout(op, i, split)
            program.layouts[t.name] = layouts[t.name]
    handed: list[Placement] = (
        list(outputs) if outputs is not None else [Replicate()] * len(graph.outputs)
    )
    if len(handed) != len(graph.outputs):
        raise PlanError(f"{len(handed)} output layouts given for {len(graph.outputs)} outputs")
    program.outputs = [
        _adapter(t, layouts[t.name], dst, dst, n, cost, t.name in grads)
        for t, dst in zip(graph.outputs, handed, strict=True)
    ]
    program.check()
    return program


def _differentiable(
    order: list[Op], tensors: Iterable[PTensor], inputs: Iterable[PTensor]
) -> set[str]:
    """Floating-point tensors that depend on a parameter or a floating input (a pipeline stage's
    activations from the stage before): the only ones a backward pass reaches."""
    grads = {t.name for t in tensors if t.kind == "param" and t.dtype.is_floating_point}
    grads |= {t.name for t in inputs if t.dtype.is_floating_point}
    for op in order:
        if any(t.name in grads for t in op.inputs):
            grads |= {t.name for t in op.outputs if t.dtype.is_floating_point}
    return grads


def _adapter(
    t: PTensor,
    src: Placement,
    dst: Placement,
    grad_src: Placement,
    n: int,
    cost: CostModel,
    differentiable: bool,
) -> Adapter:
    forward, seconds = cheapest_path(src, dst, t, n, cost)
    grad_dst = grad_layout(src, split_consumer=False)
    backward: list[Step] = []
    if differentiable:
        backward, _ = cheapest_path(grad_src, grad_dst, t, n, cost)
    return Adapter(t, src, dst, grad_src, grad_dst, tuple(forward), tuple(backward), seconds)
