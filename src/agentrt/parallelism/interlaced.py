"""The interlaced pipeline: embedding and LM head split over all devices, the layers pipelined between.

A large vocabulary makes the embedding and the head the heaviest parts of a
small-hidden model; a plain pipeline puts them whole on its first and last
stage, and those stages set the pace. Here both are tensor parallel over
*every* device (vocabulary rows for the embedding, vocabulary columns for
the head), and the layers in between form an ``n``-stage pipeline. Per
micro-batch the schedule interlaces the all-device blocks with the
pipeline's: ``E(m)`` on all devices, then ``F(s, m)`` down the stages, the
last stage's hidden state is broadcast and ``H(m)`` runs on all devices; in
training the backward mirrors it (``H`` backward on all devices, ``B(s, m)``
up the stages, the embedding's gradient broadcast from stage 0 and ``E``
backward on all devices). Forwards and backwards are each GPipe-ordered.

In plan terms (phase 1 and 2): the embedding and head operators are
partitioned over all ``n`` devices, every layer operator is replicated once
and assigned to its stage. Phase 3 lowers the two all-device segments with
:func:`~agentrt.parallelism.comm.lower` and the layers with
:func:`~agentrt.parallelism.pipeline.stages`; the hand-offs between them
are a broadcast each way. This executor is ours: torch's pipeline schedules
have no block that runs on every device. A head tied to the embedding is
split by vocabulary rows in both segments, so each device holds one shard of
the table that both read and both add their gradients to. In training the
logits stay split by vocabulary and the loss is taken on the slices
(:mod:`~agentrt.parallelism.vocab_loss`): the head's and the loss's
arithmetic are both divided over every device, and the logits never move.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch.distributed.tensor import Shard

from agentrt.parallelism.comm import CostModel, Program, lower
from agentrt.parallelism.errors import PlanError
from agentrt.parallelism.graph import Graph, Op
from agentrt.parallelism.pipeline import (
    StageModule,
    StageSpec,
    free_ops,
    pipeline,
    stage_graph,
    stages,
)
from agentrt.parallelism.plans import tensor_parallel
from agentrt.parallelism.vocab_loss import vocab_parallel_loss

if TYPE_CHECKING:
    from agentrt.parallelism.cost import Estimate


@dataclass
class Interlaced:
    graph: Graph
    head_in: list[
        str
    ]  # what the head segment reads from the layers (broadcast from the last stage)
    embed: Program  # all devices
    body: list[StageSpec]  # one stage per device
    body_graph: Graph
    head: Program  # all devices
    nmicro: int
    # weights the head shares with the embedding (a tied LM head): one shard each device holds
    tied: list[str] = field(default_factory=list)
    # the head hands over its logits split by vocabulary and the loss is taken on the slices
    # (vocab_loss.py) instead of on logits gathered whole on every device
    vocab_loss: bool = False


def _segment(graph: Graph, ops: list[Op], inputs: list[str], outputs: list[str]) -> Graph:
    state = sorted(
        {t.name for op in ops for t in op.inputs if t.kind in ("param", "buffer", "constant")}
    )
    return stage_graph(graph, StageSpec(0, ops, inputs, outputs, state))


def interlaced(
    graph: Graph,
    ndevices: int,
    *,
    nmicro: int,
    cost: CostModel | None = None,
    vocab_loss: bool = False,
) -> Interlaced:
    """Build the interlaced pipeline for ``graph`` (captured at the micro-batch size, ending in logits).

    ``vocab_loss``: a training step keeps the logits split by vocabulary where
    the head wrote them and takes the loss on the slices; refused when the
    head does not split the logits' last dimension (a vocabulary the devices
    do not divide).
    """
    if ndevices < 2:
        raise PlanError(f"interlaced pipeline: needs at least 2 devices, got {ndevices}")
    emb = next(
        (
            i
            for i, op in enumerate(graph.ops)
            if op.target is torch.ops.aten.embedding.default and op.inputs[0].kind == "param"
        ),
        None,
    )
    head = next(
        (
            i
            for i in range(len(graph.ops) - 1, -1, -1)
            if graph.ops[i].target is torch.ops.aten.linear.default
            and graph.ops[i].inputs[1].kind == "param"
        ),
        None,
    )
    if emb is None or head is None or head <= emb:
        raise PlanError(
            "interlaced pipeline: the model needs an embedding table and a linear LM head"
        )
    e_ops, h_ops = graph.ops[: emb + 1], graph.ops[head:]
    free = free_ops(graph)
    body_ops = graph.ops[emb + 1 : head]
    e_names = {t.name for op in e_ops for t in op.outputs}
    h_names = {op.name for op in h_ops}
    weights = {t.name for op in e_ops + h_ops for t in op.inputs if t.kind == "param"}
    if weights & {t.name for op in body_ops for t in op.inputs if t.kind == "param"}:
        raise PlanError(
            "interlaced pipeline: a weight of the embedding or head is also read by a layer"
        )
    tied = {t.name for op in e_ops for t in op.inputs} & {
        t.name for op in h_ops for t in op.inputs if t.kind == "param"
    }
    order = {t.name: i for i, t in enumerate(graph.tensors.values())}

    def reads(ops: list[Op], made: set[str]) -> list[str]:
        names = {
            t.name
            for op in ops
            for t in op.inputs
            if t.kind in ("input", "activation") and t.name not in made
        }
        return sorted(names, key=order.__getitem__)

    body_made = {t.name for op in body_ops for t in op.outputs}
    h_made = {t.name for op in h_ops for t in op.outputs}
    head_in = reads(h_ops, h_made)
    if any(
        graph.producer.get(t) is None or graph.producer[t].name in h_names or t not in body_made
        for t in head_in
    ):
        raise PlanError("interlaced pipeline: the LM head must read only what the layers produce")
    e_out = sorted({t for t in reads(body_ops, body_made)} & e_names, key=order.__getitem__)
    body_in = reads(body_ops, body_made)
    if any(
        t not in e_names and graph.tensors[t].kind != "input" and graph.producer[t].name not in free
        for t in body_in
    ):
        raise PlanError(
            "interlaced pipeline: the layers read something the embedding segment does not make"
        )
    embed_graph = _segment(graph, e_ops, [t.name for t in graph.inputs], e_out)
    body_graph = _segment(graph, body_ops, body_in, head_in)
    head_graph = _segment(graph, h_ops, head_in, [t.name for t in graph.outputs])
    plan = pipeline(body_graph, ndevices, nmicro=nmicro, schedule="gpipe")
    embed = lower(tensor_parallel(embed_graph, ndevices, require_linear=False), cost)
    head_plan = tensor_parallel(head_graph, ndevices)
    head_program = lower(head_plan, cost)
    if vocab_loss:
        logits = head_graph.outputs[-1]
        split = head_program.layouts.get(logits.name)
        if len(head_graph.outputs) != 1 or split != Shard(len(logits.shape) - 1):
            raise PlanError(
                "interlaced pipeline: a vocabulary-split loss needs the LM head to write its "
                f"logits split by vocabulary on {ndevices} devices; the head writes them as {split}"
            )
        head_program = lower(head_plan, cost, outputs=[split])
    for name in sorted(tied):
        if embed.storage.get(name) != head_program.storage.get(name):
            raise PlanError(
                f"interlaced pipeline: the LM head tied to the embedding ({graph.fqn[name]}) is "
                f"split as {head_program.storage.get(name)} by the head and as "
                f"{embed.storage.get(name)} by the embedding; use 'pp'"
            )
    return Interlaced(
        graph,
        head_in,
        embed,
        stages(plan),
        body_graph,
        head_program,
        nmicro,
        sorted(tied),
        vocab_loss,
    )


def interlaced_for(
    graph: Graph, ndevices: int, *, nmicro: int, train: bool, cost: CostModel | None = None
) -> Interlaced:
    """The interlaced pipeline as it runs: a training step takes its loss on the vocabulary
    slices, a forward hands over whole logits."""
    return interlaced(graph, ndevices, nmicro=nmicro, cost=cost, vocab_loss=train)


def _pack(values: list[torch.Tensor]) -> torch.Tensor:
    """The tensors of one hand-over as one buffer of bytes, so it takes one message."""
    return torch.cat([v.detach().contiguous().reshape(-1).view(torch.uint8) for v in values])


def _nbytes(meta: Any) -> int:
    return int(math.prod(meta.shape)) * int(meta.dtype.itemsize)


def _unpack(buf: torch.Tensor, metas: list[Any]) -> list[torch.Tensor]:
    out, at = [], 0
    for t in metas:
        size = _nbytes(t)
        out.append(buf[at : at + size].clone().view(t.dtype).reshape(t.shape))
        at += size
    return out


def _send(values: list[torch.Tensor], dst: int) -> Any:
    """Start sending a hop's tensors as one message; the work is waited at the step's end, so
    a sender never waits for its peer (as torch's pipeline schedules send)."""
    return dist.isend(_pack(values), dst)


def _recv(metas: list[Any], src: int) -> list[torch.Tensor]:
    buf = torch.empty(sum(map(_nbytes, metas)), dtype=torch.uint8)
    dist.recv(buf, src)
    return _unpack(buf, metas)


def _broadcast(values: list[torch.Tensor], metas: list[Any], src: int) -> list[torch.Tensor]:
    """``values`` of rank ``src`` on every rank, in one call."""
    if dist.get_rank() == src:
        buf = _pack(values)
    else:
        buf = torch.empty(sum(map(_nbytes, metas)), dtype=torch.uint8)
    dist.broadcast(buf, src)
    return _unpack(buf, metas)


class InterlacedRunner:
    """One device's share of an interlaced pipeline: both all-device segments and its layer stage."""

    def __init__(self, built: Interlaced, mesh: Any, *, train: bool) -> None:
        from agentrt.parallelism.runtime import Runner

        self.built = built
        self.group = mesh.get_group()
        self.rank, self.n = mesh.get_local_rank(), len(built.body)
        self.train = train
        self.embed = Runner(built.embed, mesh, train=train, copy=False)
        self.head = Runner(built.head, mesh, train=train, copy=False)
        for name in built.tied:  # both segments read (and accumulate gradients into) one shard
            self.head.state[name] = self.embed.state[name]
        self.spec = built.body[self.rank]
        self.stage = StageModule(self.spec, built.body_graph, train=train)

    def _metas(self, names: list[str]) -> list[Any]:
        return [self.built.graph.tensors[name] for name in names]

    def _leaves(self, values: list[torch.Tensor]) -> list[torch.Tensor]:
        return [
            v.detach().requires_grad_(
                self.train and v.is_floating_point() and torch.is_grad_enabled()
            )
            for v in values
        ]

    def step(
        self, ids: list[torch.Tensor], labels: list[torch.Tensor] | None, loss_fn: Any
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """One batch of micro-batches: logits and, with labels, the mean loss after its backward.

        The logits are whole on every device, or this device's vocabulary slice
        of them when the loss is taken on the slices (:meth:`whole_logits`).
        """
        built, rank, n = self.built, self.rank, self.n
        backward = labels is not None and torch.is_grad_enabled()
        e_names = built.embed.plan.graph.outputs
        sends: list[Any] = []
        embedded = [self.embed.forward([x]) for x in ids]  # E(m): all devices
        xs, ys = [], []
        for m, x_ids in enumerate(ids):  # F(s, m): down the stages
            if rank == 0:
                env = {t.name: v for t, v in zip(e_names, embedded[m], strict=True)}
                env.update({t.name: x_ids for t in built.graph.inputs})
                x = self._leaves([env[name] for name in self.spec.inputs])
            else:
                x = self._leaves(_recv(self._metas(self.spec.inputs), rank - 1))
            y = self.stage(*x)
            y = list(y) if isinstance(y, tuple) else [y]
            if rank < n - 1:
                sends.append(_send(y, rank + 1))
            xs.append(x)
            ys.append(y)
        logits, losses, head_grads = [], [], []
        metas = self._metas(built.head_in)
        for m in range(len(ids)):  # H(m): the last stage's output to every device
            h = self._leaves(_broadcast(ys[m] if rank == n - 1 else [], metas, n - 1))
            out = self.head.forward(h)[0]
            logits.append(out.detach())
            if labels is not None:
                if built.vocab_loss:
                    part = vocab_parallel_loss(out, labels[m], rank=rank, group=self.group)
                else:
                    part = loss_fn(out, labels[m])
                part = part / len(ids)
                if backward:
                    part.backward()  # type: ignore[no-untyped-call]
                    head_grads.append(
                        [v.grad if v.grad is not None else torch.zeros_like(v) for v in h]
                    )
                losses.append(part.detach())
        if backward:
            for m in range(len(ids)):  # B(s, m): up the stages
                live = [v for v in ys[m] if v.requires_grad]
                if rank == n - 1:
                    grads = [
                        g for v, g in zip(ys[m], head_grads[m], strict=True) if v.requires_grad
                    ]
                else:
                    grads = _recv([_Meta(v) for v in live], rank + 1)
                torch.autograd.backward(live, grads)
                if rank > 0:
                    sends.append(
                        _send(
                            [
                                v.grad if v.grad is not None else torch.zeros_like(v)
                                for v in xs[m]
                                if v.requires_grad
                            ],
                            rank - 1,
                        )
                    )
            for m in range(len(ids)):  # E(m) backward: stage 0's input gradients to every device
                wanted = [t.name for t in e_names]
                if rank == 0:
                    got = {name: v for name, v in zip(self.spec.inputs, xs[m], strict=True)}
                    grads = [
                        v.grad if v.grad is not None else torch.zeros_like(v)
                        for v in (got[name] for name in wanted)
                    ]
                else:
                    grads = []
                grads = _broadcast(grads, self._metas(wanted), 0)
                pairs = [(v, g) for v, g in zip(embedded[m], grads, strict=True) if v.requires_grad]
                if pairs:
                    torch.autograd.backward([v for v, _ in pairs], [g for _, g in pairs])
        for work in sends:
            work.wait()
        loss = torch.stack(losses).sum() if losses else None
        return torch.cat(logits), loss

    def whole_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """``step``'s logits made whole (a gather when they are a vocabulary slice); every rank calls it."""
        if not self.built.vocab_loss:
            return logits
        parts = [torch.empty_like(logits) for _ in range(self.n)]
        dist.all_gather(parts, logits.contiguous(), group=self.group)
        return torch.cat(parts, dim=-1)

    def parameters(self) -> list[torch.Tensor]:
        shared = {id(self.embed.state[name]) for name in self.built.tied}
        return [
            *self.embed.parameters.values(),
            *(p for p in self.head.parameters.values() if id(p) not in shared),
            *(p for p in self.stage.weights.values()),
        ]

    def full_grads(self, *, keep: bool) -> dict[str, torch.Tensor]:
        grads = {**self.embed.full_grads(keep=keep), **self.head.full_grads(keep=keep)}
        grads.update(self.stage.grads())
        return grads


class _Meta:
    def __init__(self, like: torch.Tensor) -> None:
        self.shape, self.dtype = tuple(like.shape), like.dtype


def estimate(
    name: str,
    built: Interlaced,
    times: Any,
    comm: CostModel,
    *,
    train: bool,
    loss: Callable[[int], float] | None = None,
) -> Estimate:
    """Predicted step: per micro-batch the two all-device segments and two broadcasts, plus the layers' GPipe makespan.

    ``loss(ways)``: the forward seconds of one micro-batch's loss split
    ``ways`` ways by vocabulary (1: taken whole on every device); a
    vocabulary-split loss adds its all-gather of three numbers per row from every slice.
    """
    from agentrt.parallelism.cost import Estimate, hop_seconds, spmd_estimate

    m, n = built.nmicro, len(built.body)
    seg = [
        spmd_estimate(name, p, _SubTimes(times, p.plan.graph), train=train)
        for p in (built.embed, built.head)
    ]
    graph = built.graph
    forward = [sum(times.part(op, 1) for op in spec.ops) for spec in built.body]
    factor = times.train_factor if train else 1.0
    backward = [(factor - 1) * f for f in forward]
    hop, hop_back = hop_seconds(graph, [s.outputs for s in built.body[:-1]], comm, packed=True)
    plan = pipeline(built.body_graph, n, nmicro=m, schedule="gpipe" if train else "infer")
    makespan = (
        plan.pipe.simulate(forward, backward, hop, hop_back) if plan.pipe is not None else 0.0
    )
    head_bytes = sum(graph.tensors[t].nbytes for t in built.head_in)
    casts = m * (1 + train) * comm.seconds("broadcast", head_bytes, n)
    segments = m * sum(s.seconds for s in seg)
    tail = m * factor * loss(n if built.vocab_loss else 1) if loss is not None and train else 0.0
    reduce = 0.0
    if built.vocab_loss and train:
        rows = math.prod(graph.outputs[-1].shape[:-1])
        itemsize = graph.outputs[-1].dtype.itemsize
        reduce = m * comm.seconds("all-gather/plain", 3 * rows * itemsize * n, n)
    total = segments + makespan + casts + tail + reduce
    compute = m * sum(s.compute_seconds for s in seg) + sum(forward) * factor * m / n + tail
    weights = max(sum(graph.tensors[k].nbytes for k in spec.state) for spec in built.body)
    acts = max(sum(t.nbytes for op in spec.ops for t in op.outputs) for spec in built.body)
    tied = sum(graph.tensors[k].nbytes // n for k in built.tied)  # held once, counted by both
    memory = (
        sum(s.memory_bytes for s in seg)
        - tied * (2 if train else 1)
        + weights * (2 if train else 1)
        + acts * (m if train else 1)
    )
    return Estimate(name, total, compute, total - compute, int(memory))


class _SubTimes:
    """Operator times of a segment's graph looked up in the whole graph's (same operator names)."""

    def __init__(self, times: Any, graph: Graph) -> None:
        self.times, self.overhead = times, times.overhead
        self.train_factor: float = times.train_factor
        self.checkpoint_seconds: float = times.checkpoint_seconds
        self.seconds = {op.name: times.seconds[op.name] for op in graph.ops}

    def part(self, op: Op, ways: int, label: str | None = None) -> float:
        seconds: float = self.times.part(op, ways, label)
        return seconds
