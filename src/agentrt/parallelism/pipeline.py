"""Pipeline plans: operators assigned to stages (phase 2 in space), micro-batches ordered (phase 2 in time).

:func:`pipeline` cuts the captured graph (captured at the micro-batch size)
into ``nstages`` stages balanced by operation count, at the cut where the
fewest activation bytes cross; every operator is ``replicate``-d once and
``assign``-ed to its stage's device. Operators that read no input and no
trainable weight (rotary tables, position ranges, causal masks) are
replicated onto every stage that reads them instead of being sent along.
The micro-batch order is a :class:`~agentrt.parallelism.schedule.PipeSchedule`
(GPipe, 1F1B or forward-only), checked when the plan is built.

:func:`stages` is phase 3 for a pipeline: each stage's operators, the
tensors it receives from the stage before (everything later stages still
need is passed along) and the parameters it holds. :class:`StageModule` runs
one stage; ``torch.distributed.pipelining`` moves the activations and
gradients between stages and runs the schedule.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.fx.node import map_arg

from agentrt.parallelism.errors import PlanError
from agentrt.parallelism.flops import op_flops
from agentrt.parallelism.graph import Graph, Op
from agentrt.parallelism.plan import Plan
from agentrt.parallelism.schedule import make

_STATE = ("param", "buffer", "constant")


def free_ops(graph: Graph) -> set[str]:
    """Operators that depend on no user input and no trainable parameter: cheap to recompute per stage."""
    tainted = {t.name for t in graph.tensors.values() if t.kind in ("input", "param")}
    free: set[str] = set()
    for op in graph.ops:
        if any(t.name in tainted for t in op.inputs):
            tainted |= {t.name for t in op.outputs}
        else:
            free.add(op.name)
    return free


def balanced_cuts(graph: Graph, nstages: int, body: list[Op]) -> list[int]:
    """Positions in ``body`` where stages 1.. start: near equal work, fewest bytes crossing."""
    if nstages > len(body):
        raise PlanError(f"pipeline: {nstages} stages for a graph of {len(body)} operators")
    index = {op.name: i for i, op in enumerate(body)}
    delta = [0] * (len(body) + 2)
    for t in graph.tensors.values():
        if t.kind == "input":
            produced = -1
        elif t.name in graph.producer and graph.producer[t.name].name in index:
            produced = index[graph.producer[t.name].name]
        else:
            continue
        uses = [index[c.name] for c in graph.consumers.get(t.name, []) if c.name in index]
        last = len(body) if t in graph.outputs else max(uses, default=produced)
        if last > produced:  # crosses every cut in produced+1..last
            delta[produced + 1] += t.nbytes
            delta[last + 1] -= t.nbytes
    crossing, running = [], 0
    for i in range(len(body) + 1):
        running += delta[i]
        crossing.append(running)
    work = [op_flops(op) for op in body]
    total = sum(work)
    prefix = [0.0]
    for w in work:
        prefix.append(prefix[-1] + w)
    cuts: list[int] = []
    for k in range(1, nstages):
        target, slack = total * k / nstages, total / (4 * nstages)
        lo = cuts[-1] + 1 if cuts else 1
        hi = len(body) - (nstages - k)
        near = [i for i in range(lo, hi + 1) if abs(prefix[i] - target) <= slack]
        pool = near or [min(range(lo, hi + 1), key=lambda i: abs(prefix[i] - target))]
        cuts.append(min(pool, key=lambda i: (crossing[i], abs(prefix[i] - target))))
    return cuts


def pipeline(
    graph: Graph,
    nstages: int,
    *,
    nmicro: int,
    schedule: str = "1f1b",
    cuts: list[str] | None = None,
) -> Plan:
    """A pipeline over ``nstages`` devices; ``cuts`` optionally names the first operator of stages 1...

    ``graph`` is captured at the micro-batch size: the full batch is
    ``nmicro`` of its inputs.
    """
    if nstages < 2:
        raise PlanError(f"a pipeline needs at least 2 devices, got {nstages}")
    plan = Plan(graph, nstages)
    free = free_ops(graph)
    body = [op for op in graph.ops if op.name not in free]
    if cuts is None:
        positions = balanced_cuts(graph, nstages, body)
    else:
        names = [op.name for op in body]
        if len(cuts) != nstages - 1 or any(c not in names for c in cuts):
            raise PlanError(
                f"pipeline: give {nstages - 1} cut operators among those that read the input"
            )
        positions = [names.index(c) for c in cuts]
        if positions != sorted(set(positions)) or positions[0] == 0:
            raise PlanError(
                "pipeline: the cut operators must be distinct, in program order, after the first"
            )
    stage = 0
    stage_of: dict[str, int] = {}
    for i, op in enumerate(body):
        while stage < len(positions) and i >= positions[stage]:
            stage += 1
        (sub,) = plan.replicate(op, 1)
        plan.assign(sub, stage)
        stage_of[op.name] = stage
    for op in reversed(graph.ops):  # a free operator goes wherever its readers are
        if op.name not in free:
            continue
        readers = {
            stage_of[c.name] for t in op.outputs for c in graph.consumers.get(t.name, [])
        } or {0}
        for sub, device in zip(plan.replicate(op, len(readers)), sorted(readers), strict=True):
            plan.assign(sub, device)
        stage_of[op.name] = min(readers)
    plan.pipe = make(schedule, nstages, nmicro)
    plan.pipe.check()
    return plan


@dataclass
class StageSpec:
    """One stage of a lowered pipeline: its operators and what crosses its boundaries."""

    index: int
    ops: list[Op]
    inputs: list[str]  # received from the stage before (stage 0: the user inputs)
    outputs: list[str]  # sent to the stage after (the last stage: the graph outputs)
    state: list[str]  # parameters, buffers and constants this stage holds
    # weights read on several stages (tied embeddings): each holder keeps a copy, and the
    # copies' gradients are summed over the holders after the backward
    tied: dict[str, list[int]] = field(default_factory=dict)


def stages(plan: Plan) -> list[StageSpec]:
    """Phase 3 for a pipeline: boundaries between consecutive stages; refuses a read from a later stage."""
    graph, n = plan.graph, plan.ndevices
    on: dict[str, set[int]] = {
        name: {plan.device[s] for s in subs} for name, subs in plan.subops.items()
    }
    order = plan.schedule()
    made: dict[str, int] = {t.name: -1 for t in graph.inputs}
    for op in order:
        if op.name not in on:
            raise PlanError(f"pipeline: {op.name} is assigned to no stage")
        for t in op.outputs:
            made[t.name] = min(on[op.name])
    needed: dict[str, int] = {}  # tensor -> the last stage that reads it from an earlier one
    holders: dict[str, set[int]] = {}
    for op in order:
        for t in op.inputs:
            for d in on[op.name]:
                if t.kind in _STATE:
                    holders.setdefault(t.name, set()).add(d)
                elif d not in on.get(_producer(graph, t.name), set()):
                    if made[t.name] > d:
                        raise PlanError(
                            f"pipeline: {op.name} on stage {d} reads {t.name}, produced on a later stage {made[t.name]}"
                        )
                    needed[t.name] = max(needed.get(t.name, d), d)
    for t in graph.outputs:
        if made.get(t.name, -1) < n - 1:
            needed[t.name] = n - 1
    tied = {
        name: sorted(where)
        for name, where in sorted(holders.items())
        if graph.tensors[name].kind == "param" and len(where) > 1
    }
    first_seen = {name: i for i, name in enumerate(graph.tensors)}
    result = []
    for d in range(n):
        if d == 0:
            inputs = [t.name for t in graph.inputs]
        else:
            inputs = sorted(
                (t for t, last in needed.items() if made[t] < d <= last), key=first_seen.__getitem__
            )
        if d == n - 1:
            outputs = [t.name for t in graph.outputs]
        else:
            outputs = sorted(
                (t for t, last in needed.items() if made[t] <= d < last), key=first_seen.__getitem__
            )
        ops = [op for op in order if d in on[op.name]]
        state = sorted(name for name, where in holders.items() if d in where)
        result.append(StageSpec(d, ops, inputs, outputs, state, tied))
    return result


def _producer(graph: Graph, name: str) -> str:
    op = graph.producer.get(name)
    return op.name if op is not None else ""


def _feeder(values: list[torch.Tensor]) -> Any:
    """Replaces each tensor argument, in ``map_arg``'s visiting order, by the next of ``values``."""
    it = iter(values)
    return lambda _node: next(it)


class _Mark(torch.autograd.Function):
    """Identity that notes in ``trace`` when a block's backward starts (the gradient reaches the stage's output)."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, trace: list[str]) -> torch.Tensor:
        ctx.trace = trace
        return x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        ctx.trace.append("B")
        return grad, None


class _Stage(nn.Module):
    """What every stage module shares: the weights as parameters, block tracing, gradient-ready outputs.

    ``trace``, when a list, records the blocks run (``F`` per forward, ``B``
    when a backward reaches the output), so a test can compare what ran with
    the schedule.
    """

    def __init__(self, spec: StageSpec, *, train: bool) -> None:
        super().__init__()
        self.spec = spec
        self.weights = nn.ParameterDict()
        self.fqn: dict[str, str] = {}
        self.trace: list[str] | None = None
        self.training_stage = train

    def finish(self, outs: list[torch.Tensor]) -> torch.Tensor | tuple[torch.Tensor, ...]:
        if self.training_stage and torch.is_grad_enabled():
            # torch's stages expect a gradient for every floating output; one that depends on no
            # weight (a rotary table computed from positions) becomes a leaf that absorbs it.
            outs = [
                o.detach().requires_grad_(True)
                if o.is_floating_point() and not o.requires_grad
                else o
                for o in outs
            ]
        if self.trace is not None:
            self.trace.append("F")
            marked = next((i for i, o in enumerate(outs) if o.requires_grad), None)
            if marked is not None:
                outs[marked] = _Mark.apply(outs[marked], self.trace)  # type: ignore[no-untyped-call]
        return outs[0] if len(outs) == 1 else tuple(outs)

    def tied_groups(self, width: int = 1, position: int = 0) -> dict[str, Any]:
        """Per tied weight, the group of its holders at this rank's position in the stage groups.

        Every rank must call this with the same ``width``: each group is created everywhere.
        """
        import torch.distributed as dist

        groups = {}
        for name, holders in self.spec.tied.items():
            for j in range(width):
                group = dist.new_group([s * width + j for s in holders])
                if j == position:
                    groups[name] = group
        return groups

    def reduce_tied(self, groups: dict[str, Any]) -> None:
        """Sum the gradients of this stage's copies of tied weights with the other holders' copies."""
        import torch.distributed as dist

        for name, group in groups.items():
            if name in self.weights and self.weights[name].grad is not None:
                dist.all_reduce(self.weights[name].grad, group=group)

    def grads(self) -> dict[str, torch.Tensor]:
        """This stage's weight gradients by the model's names (collective for a split stage)."""
        return {
            self.fqn[name]: p.grad if p.grad is not None else torch.zeros_like(p)
            for name, p in self.weights.items()
        }


class StageModule(_Stage):
    """One pipeline stage on one device: its operators interpreted in order."""

    def __init__(self, spec: StageSpec, graph: Graph, *, train: bool) -> None:
        super().__init__(spec, train=train)
        self.fixed: dict[str, torch.Tensor] = {}
        self.fqn = {name: graph.fqn[name] for name in spec.state}
        for name in spec.state:
            value = graph.state[name]
            if graph.tensors[name].kind == "param" and value.is_floating_point():
                self.weights[name] = nn.Parameter(value.clone(), requires_grad=train)
            else:
                self.fixed[name] = value

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        env: dict[str, torch.Tensor] = dict(self.fixed)
        env.update(self.weights.items())
        env.update(zip(self.spec.inputs, args, strict=True))
        for op in self.spec.ops:
            args_, kwargs = map_arg(
                (op.node.args, op.node.kwargs),
                _feeder([env[t.name] for t in op.inputs]),
            )
            result = op.target(*args_, **kwargs)
            if len(op.outputs) == 1 and not isinstance(result, (list, tuple)):
                env[op.outputs[0].name] = result
            else:
                for t, value in zip(op.outputs, result, strict=True):
                    env[t.name] = value
        return self.finish([env[name] for name in self.spec.outputs])


def stage_graph(graph: Graph, spec: StageSpec) -> Graph:
    """The sub-graph of one stage, as a graph whose user inputs are what the stage receives.

    A plan for one device group (tensor parallel inside a stage) is built and
    lowered on it like on a whole model.
    """
    names = set(spec.inputs) | set(spec.state)
    for op in spec.ops:
        names |= {t.name for t in (*op.inputs, *op.outputs)}
    sub = Graph(
        graph.program,
        list(spec.ops),
        {k: graph.tensors[k] for k in graph.tensors if k in names},
        [graph.tensors[k] for k in spec.inputs],
        [graph.tensors[k] for k in spec.outputs],
        {k: graph.state[k] for k in spec.state},
        {k: graph.fqn[k] for k in spec.state},
        [],
        graph.alias,
    )
    for op in sub.ops:
        for t in op.outputs:
            sub.producer[t.name] = op
        for t in op.inputs:
            sub.consumers.setdefault(t.name, []).append(op)
    return sub


class SplitStageModule(_Stage):
    """One pipeline stage over a group of devices: a lowered SPMD program of the stage's sub-graph.

    The stage's weight pieces are this module's parameters (so torch's
    schedule scales their gradients); its outputs are whole on every device
    of the group, so each device sends to its counterpart in the next stage.
    """

    def __init__(self, spec: StageSpec, program: Any, mesh: Any, *, train: bool) -> None:
        from agentrt.parallelism.runtime import Runner

        super().__init__(spec, train=train)
        self.runner = Runner(program, mesh, train=train, copy=False)
        graph = program.plan.graph
        for name, piece in list(self.runner.state.items()):
            if piece.requires_grad:
                self.weights[name] = nn.Parameter(piece, requires_grad=True)
                self.runner.state[name] = self.weights[name]
                self.fqn[name] = graph.fqn[name]

    def forward(self, *args: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        return self.finish(self.runner.forward(list(args)))

    def grads(self) -> dict[str, torch.Tensor]:
        for name, p in self.weights.items():
            self.runner.state[name] = p
        return self.runner.full_grads()


PIPELINE_PLANS = ("pp", "gpipe", "1f1b", "3d", "interlaced")


@dataclass
class Pipeline:
    """A pipeline plan lowered for running: its stages, and each stage's plan over its device group."""

    plan: Plan
    specs: list[StageSpec]
    width: int  # devices per stage
    inner: list[Plan] | None  # None: every stage on one device

    @property
    def ndevices(self) -> int:
        return len(self.specs) * self.width

    def place(self, rank: int) -> tuple[int, int]:
        """(stage, position in the stage's group) of ``rank``: rank = stage * width + position."""
        return divmod(rank, self.width)


def three_d(graph: Graph, ndevices: int, *, tp: int, nmicro: int, schedule: str) -> Pipeline:
    """Megatron's 3-D plan without the data axis: ``ndevices // tp`` pipeline stages, each tensor parallel over ``tp``."""
    from agentrt.parallelism.plans import tensor_parallel

    if tp < 2 or ndevices % tp or ndevices // tp < 2:
        raise PlanError(
            f"3-D: {ndevices} devices do not make at least 2 pipeline stages of {tp} tensor-parallel devices"
        )
    outer = pipeline(graph, ndevices // tp, nmicro=nmicro, schedule=schedule)
    specs = stages(outer)
    inner = []
    for spec in specs:
        try:
            inner.append(tensor_parallel(stage_graph(graph, spec), tp))
        except PlanError as exc:
            raise PlanError(f"3-D: stage {spec.index}: {exc}") from None
    return Pipeline(outer, specs, tp, inner)


def pipeline_plan(name: str, graph: Graph, ndevices: int, *, nmicro: int, train: bool) -> Pipeline:
    """A shipped pipeline plan by name: ``pp`` is 1F1B for training and the forward-only pipeline to serve.

    ``3d`` is tensor parallel over 2 devices inside each of ``ndevices / 2`` stages.
    """
    if name not in PIPELINE_PLANS or name == "interlaced":
        raise PlanError(
            f"unknown pipeline plan {name!r}; known: {', '.join(PIPELINE_PLANS[:-1])} "
            "(the interlaced pipeline is agentrt.parallelism.interlaced)"
        )
    if name in ("pp", "3d"):
        kind = "1f1b" if train else "infer"
    elif not train:
        raise PlanError(f"plan {name!r} schedules a training step; serve with plan 'pp'")
    else:
        kind = name
    if name == "3d":
        return three_d(graph, ndevices, tp=2, nmicro=nmicro, schedule=kind)
    plan = pipeline(graph, ndevices, nmicro=nmicro, schedule=kind)
    return Pipeline(plan, stages(plan), 1, None)
