"""The cost model: predicted step time and memory per device of a plan.

Three inputs, each replaceable:

- **operator times**: measured on this machine (each operator of the graph
  timed on its traced shapes, cached on disk by target and shapes), or from a
  :class:`DeviceProfile` (peak FLOP/s, memory bandwidth and a per-call
  overhead of a device such as an A100) for a cluster one is not running on.
  Measured here, each way an operator can be split (every label it may be
  cut along, in as many parts as the plans use) is timed too, at the part's
  shapes and through the runtime's split path: a part takes its whole
  operator's time plus what the part measured beyond the whole. Otherwise a
  part of an operator split ``n`` ways takes the per-call overhead plus
  ``1/n`` of the rest;
- **communication**: phase 3's alpha-beta :class:`CostModel`, whose alpha and
  beta are fitted to collectives measured on gloo (:func:`fit_alpha_beta`)
  or taken from the profile (inside a node and across nodes);
- **memory**: the bytes of the weights a device holds (twice in training:
  their gradients) and of the activations it keeps (all of them for the
  backward in training, the largest operator's in a forward).

SPMD plans cost the sum of their operators' part times (a co-sharded
operator's ``k`` parts per device each, and again in a training step's
backward, which recomputes them, each with activation checkpointing's own
cost measured on this host) and their communication; a training step
costs a measured multiple of the forward's compute (three forwards on a
profile). A pipeline's stages are timed the
same way and played through the schedule's simulation, so bubbles count.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any, Protocol

import torch
from torch.distributed.tensor import Shard

from agentrt.parallelism.anno import Split
from agentrt.parallelism.comm import CostModel, Program
from agentrt.parallelism.errors import ParallelError
from agentrt.parallelism.flops import op_flops
from agentrt.parallelism.graph import Graph, Op

PROFILES = Path(__file__).parent / "profiles"


@dataclass(frozen=True)
class DeviceProfile:
    """A device and its interconnect, enough to price operators and collectives without running them."""

    name: str
    devices: int
    nodes: int
    flops: float  # sustained FLOP/s of the dense kernels
    memory_bandwidth: float  # bytes/s
    memory: int  # bytes per device
    overhead: float  # seconds per operator call (launch)
    alpha: float  # seconds per collective round inside a node
    beta: float  # bytes/s between devices of a node
    alpha_inter: float
    beta_inter: float  # bytes/s per device across nodes

    def comm(self, ndevices: int) -> CostModel:
        """The alpha-beta model for a group of ``ndevices``: across nodes when it spans more than one."""
        per_node = self.devices // self.nodes
        if ndevices > per_node:
            return CostModel(alpha=self.alpha_inter, beta=self.beta_inter)
        return CostModel(alpha=self.alpha, beta=self.beta)


def load_profile(spec: str) -> DeviceProfile:
    """A shipped profile by name (``a100-80gb-x8``, ``v100-32gb-x32``) or a JSON file of the same fields."""
    path = PROFILES / f"{spec}.json" if not spec.endswith(".json") else Path(spec)
    if not path.is_file():
        shipped = ", ".join(sorted(p.stem for p in PROFILES.glob("*.json")))
        raise ParallelError(
            f"unknown device profile {spec!r}: give a JSON file or one of {shipped}"
        )
    try:
        data = json.loads(path.read_text())
        return DeviceProfile(**{k: v for k, v in data.items() if not k.startswith("_")})
    except (ValueError, TypeError) as exc:
        raise ParallelError(f"device profile {path}: {exc}") from None


def _cache_path() -> Path:
    root = os.environ.get("AGENTRT_CACHE_DIR") or os.path.join(Path.home(), ".cache", "agentrt")
    return Path(root) / "parallel-op-times.json"


def _key(op: Op, concurrent: int = 1) -> str:
    shapes = ";".join(f"{t.dtype}{list(t.shape)}" for t in op.inputs)
    return f"{op.target}|{shapes}|{_runner(concurrent)}"


def _runner(concurrent: int) -> str:
    """The part of a timing's cache key that names its conditions (one thread per rank,
    ``concurrent`` ranks at once): a time taken under other conditions is another entry."""
    return "runner-1-thread" + (f"-x{concurrent}" if concurrent > 1 else "")


def _part_key(op: Op, label: str, ways: int, concurrent: int = 1) -> str:
    """The cache key of what one of ``ways`` parts of ``op`` along ``label`` takes beyond the whole."""
    return f"{_key(op, concurrent)}|part-{label}/{ways}"


def split_labels(op: Op) -> list[str]:
    """The labels a plan may cut ``op`` along (as :meth:`Plan.partition` accepts them)."""
    if not op.known:
        return []
    return [
        label
        for label in op.anno.splittable()
        if label in op.anno.reduce or any(label in out for out in op.anno.outputs)
    ]


def part_shapes(op: Op, label: str, ways: int) -> list[tuple[int, ...]] | None:
    """The input shapes of one of ``ways`` parts of ``op`` cut along ``label`` (None: it does not divide)."""
    shapes = []
    for labels, t in zip(
        (*op.anno.inputs, *op.anno.outputs), (*op.inputs, *op.outputs), strict=True
    ):
        shape = list(t.shape)
        for d, name in enumerate(labels):
            if name == label:
                if shape[d] % ways:
                    return None
                shape[d] //= ways
        shapes.append(tuple(shape))
    return shapes[: len(op.inputs)]


class OpTimes:
    """Seconds per operator call of a graph on one device: measured (and cached) or from a profile."""

    def __init__(
        self,
        graph: Graph,
        profile: DeviceProfile | None = None,
        *,
        cache: bool = True,
        concurrent: int = 1,
        splits: tuple[int, ...] = (),
        colocated: tuple[int, ...] = (),
    ):
        """``concurrent``: measure with that many ranks running the graph at once, each
        single-threaded, as a plan's ranks share this host's cores. ``splits``: the part
        counts to measure every operator's parts at (a plan over ``n`` devices cuts into
        ``n``); ``colocated``: those to measure the operators co-shard runs several parts
        of per device at (``k * n``, :func:`~agentrt.parallelism.plans.co_sharded`)."""
        self.graph = graph
        self.profile = profile
        self.concurrent = concurrent
        self.splits = tuple(sorted(set(splits)))
        self.colocated = tuple(sorted(set(colocated)))
        self.seconds: dict[str, float] = {}
        # (operator, label, ways) -> seconds one part takes beyond the whole operator, measured
        self.beyond: dict[tuple[str, str, int], float] = {}
        if profile is not None:
            for op in graph.ops:
                work = op_flops(op) / profile.flops
                traffic = (
                    sum(t.nbytes for t in (*op.inputs, *op.outputs)) / profile.memory_bandwidth
                )
                self.seconds[op.name] = profile.overhead + max(work, traffic)
            self.overhead = profile.overhead
            self.train_factor = 3.0  # a backward of about twice the forward's work
            self.checkpoint_seconds = profile.overhead  # about one more call's worth
        else:
            self._measure(cache)
            self.overhead = min(self.seconds.values(), default=0.0)

    def _measure(self, cache: bool) -> None:
        path = _cache_path()
        known: dict[str, float] = {}
        if cache and path.is_file():
            try:
                known = json.loads(path.read_text())
            except ValueError:
                known = {}
        k = self.concurrent
        missing = [op for op in self.graph.ops if _key(op, k) not in known]
        parts = _parts_key(self.graph, k, self.splits, self.colocated)
        if (
            missing
            or _train_key(self.graph, k) not in known
            or ((self.splits or self.colocated) and parts not in known)
            or (self.colocated and _checkpoint_key(k) not in known)
        ):
            names = {op.name for op in missing}
            known.update(_time_ops(self.graph, names, k, self.splits, self.colocated))
            if cache:
                path.parent.mkdir(parents=True, exist_ok=True)
                path.write_text(json.dumps(known))
        # keys starting "<" hold measurements of a graph or of the host, not of an operator
        floor = min(
            (v for key, v in known.items() if not key.startswith("<") and "|part-" not in key),
            default=0.0,
        )
        self.seconds = {op.name: known.get(_key(op, k), floor) for op in self.graph.ops}
        self.train_factor = known[_train_key(self.graph, k)]
        self.checkpoint_seconds = known.get(_checkpoint_key(k), 0.0)
        for op in self.graph.ops:
            for label in split_labels(op):
                for ways in (*self.splits, *self.colocated):
                    key = _part_key(op, label, ways, k)
                    if key in known:
                        self.beyond[(op.name, label, ways)] = known[key]

    def part(self, op: Op, ways: int, label: str | None = None) -> float:
        """One of ``ways`` parts of ``op`` (cut along ``label``, when known).

        A part measured at its shapes takes the whole operator's time plus what
        it measured beyond the whole; otherwise the call overhead and a
        ``1/ways`` share of the rest.
        """
        whole = self.seconds[op.name]
        if ways > 1 and label is not None and (op.name, label, ways) in self.beyond:
            return max(whole + self.beyond[(op.name, label, ways)], self.overhead)
        return self.overhead + max(whole - self.overhead, 0.0) / max(ways, 1)


class PartTimes(Protocol):
    """What pricing a plan needs of operator times: the seconds of one of ``ways`` parts of an
    operator, a training step's compute as a multiple of its forward's, and what running one
    part through activation checkpointing costs beyond the part (forward and backward)."""

    train_factor: float
    checkpoint_seconds: float

    def part(self, op: Op, ways: int, label: str | None = None) -> float: ...


_TIMED_RUNS = 7  # forwards per rank; each operator's median is kept


def _synthetic(op: Op, shapes: list[tuple[int, ...]]) -> list[torch.Tensor]:
    """Inputs of ``op`` at ``shapes``: random floats, zero integers (valid indices) and masks."""
    return [
        torch.randn(shape, dtype=t.dtype)
        if t.dtype.is_floating_point
        else torch.zeros(shape, dtype=t.dtype)
        for t, shape in zip(op.inputs, shapes, strict=True)
    ]


def _median_call(op: Op, values: list[torch.Tensor], split: Split | None, graph: Graph) -> float:
    """The median of ``_TIMED_RUNS`` runtime calls of ``op`` (or its part ``split``), after one."""
    import statistics

    from agentrt.parallelism.runtime import call_op

    call_op(op, values, split, graph.alias)  # the first call pays one-time costs
    seconds = []
    for _ in range(_TIMED_RUNS):
        start = time.perf_counter()
        call_op(op, values, split, graph.alias)
        seconds.append(time.perf_counter() - start)
    return statistics.median(seconds)


# What synthetic inputs can make an operator's call refuse (a shape argument it reads from a
# tensor, say); such a part keeps the share-of-the-whole estimate.
_CALL_ERRORS = (RuntimeError, ValueError, IndexError, TypeError)


def _part_beyond(
    graph: Graph, splits: tuple[int, ...], concurrent: int, colocated: tuple[int, ...] = ()
) -> dict[str, float]:
    """Seconds one part of each operator takes beyond the whole, per label and part count
    (``colocated`` counts too for the operators co-shard runs several parts of per device).

    Both are called the same way (:func:`~agentrt.parallelism.runtime.call_op`,
    the runtime's call of an operator: binding, and for a part the split path
    that localizes its arguments), the whole at its traced shapes and the part
    at its shapes, back to back.
    """
    from agentrt.parallelism.plans import co_sharded

    beyond: dict[str, float] = {}
    with torch.no_grad():
        for op in graph.ops:
            labels = split_labels(op)
            if not labels:
                continue
            values = _synthetic(op, [tuple(t.shape) for t in op.inputs])
            try:
                whole = _median_call(op, values, None, graph)
            except _CALL_ERRORS:
                continue
            counts = (*splits, *colocated) if co_sharded(op) else splits
            for label in labels:
                for ways in counts:
                    shapes = part_shapes(op, label, ways)
                    if shapes is None:
                        continue
                    pieces = _synthetic(op, shapes)
                    try:
                        part = _median_call(op, pieces, Split(label, ways, 0), graph)
                    except _CALL_ERRORS:
                        continue
                    beyond[_part_key(op, label, ways, concurrent)] = part - whole
    return beyond


def _time_worker(
    rank: int,
    n: int,
    program: str,
    out: str,
    splits: tuple[int, ...] = (),
    colocated: tuple[int, ...] = (),
) -> None:
    """Every rank runs the whole graph on its own (a one-device program: no collectives), at once.

    Besides each operator's calls (no gradient), the whole forward is timed
    with and without its backward, so a training step's compute is a measured
    multiple of the forward rather than an assumed one; and each operator's
    parts at every count of ``splits`` (:func:`_part_beyond`).
    """
    import statistics

    import torch.distributed as dist

    from agentrt.parallelism.comm import lower
    from agentrt.parallelism.graph import from_program
    from agentrt.parallelism.plan import Plan
    from agentrt.parallelism.runtime import Runner, init_mesh

    graph = from_program(torch.export.load(program))
    runner = Runner(lower(Plan(graph, 1)), init_mesh(n), train=True, copy=False)
    dist.barrier()
    inputs = [
        torch.randn(t.shape, dtype=t.dtype)
        if t.dtype.is_floating_point
        else torch.zeros(t.shape, dtype=t.dtype)
        for t in graph.inputs
    ]
    forward, step = [], []
    with torch.no_grad():
        runner.forward(inputs)  # the first run pays one-time costs
        runner.timer = {}
        for _ in range(_TIMED_RUNS):
            start = time.perf_counter()
            runner.forward(inputs)
            forward.append(time.perf_counter() - start)
    timer, runner.timer = runner.timer, None
    for i in range(_TIMED_RUNS + 1):  # the first pays the backward's one-time costs
        start = time.perf_counter()
        runner.forward(inputs)[0].float().sum().backward()  # type: ignore[no-untyped-call]
        if i:
            step.append(time.perf_counter() - start)
        for piece in runner.parameters.values():
            piece.grad = None
    seconds = {name: statistics.median(calls) for name, calls in timer.items()}
    seconds[_TRAIN] = statistics.median(step) / statistics.median(forward)
    seconds.update(_part_beyond(graph, splits, n, colocated))
    if colocated:
        seconds[_CHECKPOINT] = _checkpoint_overhead()
    torch.save(seconds, f"{out}.{rank}")


_TRAIN = "<train-factor>"  # a training step's seconds over its forward's, in a timing result
_CHECKPOINT = "<checkpoint>"  # a checkpointed part's seconds beyond the plain part, likewise
_CHECKPOINT_RUNS = 51


def _checkpoint_overhead() -> float:
    """Seconds a small part run through ``checkpoint`` (as co-shard runs its parts) takes
    beyond the same part run plainly, its forward and its backward (which recomputes it)."""
    import statistics

    from torch.utils.checkpoint import checkpoint

    x = torch.randn(4, 64, requires_grad=True)

    def once(checkpointed: bool) -> float:
        start = time.perf_counter()
        y = checkpoint(torch.tanh, x, use_reentrant=False) if checkpointed else torch.tanh(x)
        y.sum().backward()
        return time.perf_counter() - start

    once(False), once(True)  # the first calls pay one-time costs
    plain, checked = [], []
    for _ in range(_CHECKPOINT_RUNS):  # interleaved, so load falls on both alike
        plain.append(once(False))
        checked.append(once(True))
    return max(statistics.median(checked) - statistics.median(plain), 0.0)


def _time_ops(
    graph: Graph,
    names: set[str],
    concurrent: int = 1,
    splits: tuple[int, ...] = (),
    colocated: tuple[int, ...] = (),
) -> dict[str, float]:
    """Each operator's call through the per-rank runtime (binding included), median of seven runs,
    the graph's training factor (keyed by :func:`_train_key`) and what each part at every count
    of ``splits`` takes beyond its whole operator (keyed by :func:`_part_key`).

    Measured single-threaded like every rank, on ``concurrent`` processes at
    once (the mean over them), so the times include what sharing the host's
    cores with a plan's other ranks costs.
    """
    import tempfile

    from agentrt.parallelism.spawn import run_ranks

    with tempfile.TemporaryDirectory() as tmp:
        program, out = os.path.join(tmp, "program.pt2"), os.path.join(tmp, "times.pt")
        torch.export.save(graph.program, program)
        run_ranks(
            _time_worker, concurrent, (program, out, splits, colocated), what="operator timing"
        )
        timers: list[dict[str, float]] = [torch.load(f"{out}.{r}") for r in range(concurrent)]
    times = {
        _key(graph.op(name), concurrent): sum(t[name] for t in timers) / concurrent
        for name in names
        if all(name in t for t in timers)
    }
    times[_train_key(graph, concurrent)] = sum(t[_TRAIN] for t in timers) / concurrent
    for key in timers[0]:  # the parts every rank measured (keyed by _part_key)
        if "|part-" in key and all(key in t for t in timers):
            times[key] = sum(t[key] for t in timers) / concurrent
    if all(_CHECKPOINT in t for t in timers):
        times[_checkpoint_key(concurrent)] = sum(t[_CHECKPOINT] for t in timers) / concurrent
    if splits or colocated:
        times[_parts_key(graph, concurrent, splits, colocated)] = 1.0
    return times


def _checkpoint_key(concurrent: int) -> str:
    """The cache key of the checkpoint's cost per part (the same for every graph)."""
    return f"{_CHECKPOINT}|{_runner(concurrent)}"


def _parts_key(
    graph: Graph, concurrent: int, splits: tuple[int, ...], colocated: tuple[int, ...] = ()
) -> str:
    """The cache key saying a graph's parts were measured at these counts (some may not run)."""
    counts = f"|{list(splits)}|{list(colocated)}"
    return _train_key(graph, concurrent).replace(_TRAIN, "<parts>") + counts


def _train_key(graph: Graph, concurrent: int) -> str:
    """The cache key of a graph's training factor: its operators and shapes, hashed."""
    import hashlib

    ops = "\n".join(_key(op) for op in graph.ops)
    digest = hashlib.sha256(ops.encode()).hexdigest()[:16]
    return f"{_TRAIN}|{digest}|{_runner(concurrent)}"


@dataclass
class Estimate:
    """What the cost model predicts for one plan."""

    plan: str
    seconds: float  # one step (a forward, or a training step)
    compute_seconds: float
    comm_seconds: float
    memory_bytes: int  # the most loaded device

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def device_compute(program: Program, op: Op, times: PartTimes) -> tuple[float, float]:
    """Seconds of ``op``'s forward on one device, and what a training step's backward recomputes.

    A split operator runs one part per device, a co-sharded one its ``k``
    parts one after another, each recomputed in the backward (the runtime
    checkpoints them so one part's intermediates are alive at a time), and
    each paying the checkpoint's own cost in a training step.
    """
    split = program.plan.transform_of(op)
    if split is None:
        return times.part(op, 1), 0.0
    k = max(split.n // program.ndevices, 1)
    forward = k * times.part(op, split.n, split.label)
    return forward, (forward + k * times.checkpoint_seconds if k > 1 else 0.0)


def spmd_estimate(name: str, program: Program, times: PartTimes, *, train: bool) -> Estimate:
    """A plan that runs every operator on every device: parts' times plus its collectives."""
    graph, n = program.plan.graph, program.ndevices
    per_op = [device_compute(program, op, times) for op in graph.ops]
    compute = sum(forward for forward, _ in per_op)
    if train:
        compute = compute * times.train_factor + sum(again for _, again in per_op)
    comm = program.comm_seconds(train=train)
    weights = program.param_bytes() * (2 if train else 1)
    acts = [
        sum(
            t.nbytes // n if isinstance(program.layouts.get(t.name), Shard) else t.nbytes
            for t in op.outputs
        )
        for op in graph.ops
    ]
    memory = weights + (sum(acts) if train else 2 * max(acts, default=0))
    return Estimate(name, compute + comm, compute, comm, int(memory))


def pipeline_estimate(
    name: str,
    built: Any,
    graph: Graph,
    times: OpTimes,
    comm: CostModel,
    *,
    train: bool,
    loss: float = 0.0,
) -> Estimate:
    """A pipeline (or 3-D) plan: stage times through the schedule's simulation, hops as point-to-point.

    ``loss``: the forward seconds of one micro-batch's loss, which the
    schedule takes beside the last stage (its backward scales with the
    training factor like the stage's own).
    """
    from agentrt.parallelism.comm import lower

    pipe = built.plan.pipe
    forward, memory, inner_comm = [], [], 0.0
    for i, spec in enumerate(built.specs):
        if built.inner is not None:
            program = lower(built.inner[i], comm)
            est = spmd_estimate(name, program, times, train=False)
            forward.append(est.seconds)
            inner_comm += est.comm_seconds
            weights = program.param_bytes()
        else:
            forward.append(sum(times.part(op, 1) for op in spec.ops))
            weights = sum(graph.tensors[k].nbytes for k in spec.state)
        acts = sum(t.nbytes for op in spec.ops for t in op.outputs) // built.width
        in_flight = (
            max(
                sum(1 for b in pipe.sequences[i][: j + 1] if b.kind == "F")
                - sum(1 for b in pipe.sequences[i][: j + 1] if b.kind == "B")
                for j in range(len(pipe.sequences[i]))
            )
            if train
            else 1
        )
        memory.append(weights * (2 if train else 1) + acts * in_flight)
    if train:
        forward[-1] += loss
    hop, hop_back = hop_seconds(graph, [spec.outputs for spec in built.specs[:-1]], comm)
    factor = times.train_factor if train else 1.0
    backward = [(factor - 1) * f for f in forward]
    total = pipe.simulate(forward, backward, hop, hop_back)
    compute = sum(forward) * factor * pipe.nmicro / len(forward)
    return Estimate(name, total, compute, total - compute, int(max(memory)))


def hop_seconds(
    graph: Graph, crossings: list[list[str]], comm: CostModel, *, packed: bool = False
) -> tuple[float, float]:
    """The slowest hop between two stages down the pipeline, and back up it in a training step.

    ``crossings``: the tensors each stage hands to the next. torch's pipeline
    schedules send each tensor with a point-to-point call of its own, so a
    hop costs one call per tensor (a mask and rotary tables beside the hidden
    state are four calls, not one); ``packed``: the hop's tensors travel as
    one message (the interlaced executor). The way back carries the
    gradients of the floating ones.
    """

    def calls(names: list[str], grads: bool) -> float:
        sizes = [
            graph.tensors[t].nbytes
            for t in names
            if not grads or graph.tensors[t].dtype.is_floating_point
        ]
        if packed:
            sizes = [sum(sizes)] if sizes else []
        return sum(comm.seconds("send/recv", size, 2) for size in sizes)

    down = max((calls(names, False) for names in crossings), default=0.0)
    up = max((calls(names, True) for names in crossings), default=0.0)
    return down, up


def loss_ops(graph: Graph) -> list[Op]:
    """The operators of a training step's graph after its LM head (the last linear reading a
    weight): the loss, which a pipeline takes beside its last stage."""
    head = max(
        (
            i
            for i, op in enumerate(graph.ops)
            if op.target is torch.ops.aten.linear.default and op.inputs[1].kind == "param"
        ),
        default=len(graph.ops) - 1,
    )
    return graph.ops[head + 1 :]


def fit_alpha_beta(samples: list[tuple[int, float]], n: int) -> CostModel:
    """Ring all-reduce times ``(bytes, seconds)`` on ``n`` devices fitted to alpha and beta.

    Least squares of the *relative* error (each sample weighted by one over its
    time squared), so a loaded host's slow large message does not swamp the
    small ones a layer sends.
    """
    if len(samples) < 2:
        raise ParallelError("fitting alpha and beta needs at least two message sizes")
    rounds = 2 * (n - 1)
    rows = [(rounds, 2 * (n - 1) / n * b, s) for b, s in samples]  # s = rounds*alpha + x/beta
    w = [1.0 / (s * s) for _, _, s in rows]
    saa = sum(wi * a * a for wi, (a, _, _) in zip(w, rows, strict=True))
    sax = sum(wi * a * x for wi, (a, x, _) in zip(w, rows, strict=True))
    sxx = sum(wi * x * x for wi, (_, x, _) in zip(w, rows, strict=True))
    say = sum(wi * a * y for wi, (a, _, y) in zip(w, rows, strict=True))
    sxy = sum(wi * x * y for wi, (_, x, y) in zip(w, rows, strict=True))
    det = saa * sxx - sax * sax
    if det <= 0:
        raise ParallelError("fitting alpha and beta needs message sizes that differ")
    alpha = (say * sxx - sax * sxy) / det
    inv_beta = (saa * sxy - sax * say) / det
    if alpha < 0 or inv_beta <= 0:  # a degenerate fit: fall back to a line through the extremes
        (b0, s0), (b1, s1) = min(samples), max(samples)
        inv_beta = max((s1 - s0) / max(2 * (n - 1) / n * (b1 - b0), 1), 1e-15)
        alpha = max(s0 - 2 * (n - 1) / n * b0 * inv_beta, 0.0) / rounds
    return CostModel(alpha=alpha, beta=1.0 / inv_beta)


_SIZES = (4 << 10, 64 << 10, 256 << 10, 1 << 20)


def _allreduce_worker(rank: int, n: int, out: str) -> None:
    import torch.distributed as dist

    samples = []
    for size in _SIZES:
        x = torch.zeros(size // 4)
        best = float("inf")
        for _ in range(5):
            dist.barrier()
            start = time.perf_counter()
            dist.all_reduce(x)
            best = min(best, time.perf_counter() - start)
        samples.append((size, best))
    if rank == 0:
        Path(out).write_text(json.dumps(samples))


def measured_comm(n: int = 2, *, cache: bool = True) -> tuple[CostModel, list[tuple[int, float]]]:
    """Alpha and beta fitted to gloo all-reduces measured on ``n`` local processes, and the runtime's
    per-call line of each collective (:mod:`~agentrt.parallelism.collectives`); both cached."""
    import tempfile

    from agentrt.parallelism.spawn import run_ranks

    path = _cache_path().with_name(f"parallel-gloo-allreduce-{n}.json")
    if cache and path.is_file():
        samples = [tuple(s) for s in json.loads(path.read_text())]
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "samples.json")
            run_ranks(_allreduce_worker, n, (out,), what="all-reduce measurement")
            samples = [tuple(s) for s in json.loads(Path(out).read_text())]
        if cache:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(samples))
    pairs = [(int(b), float(t)) for b, t in samples]
    wire = fit_alpha_beta(pairs, n)
    from agentrt.parallelism import collectives

    calls = collectives.measure(n, path.parent if cache else None)
    return (
        replace(
            wire,
            measured=collectives.lines(calls),
            measured_n=n,
            sync=collectives.sync_wait(calls),
        ),
        pairs,
    )
