"""Run a lowered program on one rank of a ``torch.distributed`` group.

Each rank walks the same instruction list: adapt the inputs of an operator
(the collectives, through DTensor's ``redistribute``), then call the ATen
operator on its local pieces with its arguments localized. The adapters are
autograd functions whose backward runs the backward path phase 3 chose, so a
loss computed this way back-propagates across devices like the single-device
model, weight-gradient reduction included.
"""

from __future__ import annotations

import time
from typing import Any

import torch
import torch.distributed as dist
from torch.distributed.device_mesh import DeviceMesh
from torch.distributed.tensor import DTensor, Placement, Replicate, Shard
from torch.fx.node import map_arg
from torch.utils.checkpoint import checkpoint

from agentrt.parallelism.anno import Split
from agentrt.parallelism.comm import Adapter, Program, Step
from agentrt.parallelism.graph import Op


def _contiguous_stride(shape: tuple[int, ...]) -> tuple[int, ...]:
    stride, acc = [], 1
    for size in reversed(shape):
        stride.append(acc)
        acc *= size
    return tuple(reversed(stride))


def _run_steps(
    x: torch.Tensor, steps: tuple[Step, ...], mesh: DeviceMesh, shape: tuple[int, ...]
) -> torch.Tensor:
    for step in steps:
        if step.prim == "local-vchunk":
            # DTensor keeps Replicate -> Partial internal; device 0 keeps the value, the others add zero.
            x = x if mesh.get_local_rank() == 0 else torch.zeros_like(x)
            continue
        full = DTensor.from_local(
            x.contiguous(),
            mesh,
            [step.src],
            run_check=False,
            shape=torch.Size(shape),
            stride=_contiguous_stride(shape),
        )
        x = full.redistribute(mesh, [step.dst]).to_local()
    return x


class _Move(torch.autograd.Function):
    """One adapter: its forward path on the way in, its backward path on the gradient."""

    @staticmethod
    def forward(ctx: Any, x: torch.Tensor, adapter: Adapter, mesh: DeviceMesh) -> torch.Tensor:
        ctx.adapter, ctx.mesh = adapter, mesh
        out = _run_steps(x, adapter.forward, mesh, adapter.tensor.shape)
        return out if out is not x else x.view_as(x)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, None, None]:
        adapter: Adapter = ctx.adapter
        return _run_steps(grad, adapter.backward, ctx.mesh, adapter.tensor.shape), None, None


def local_piece(
    full: torch.Tensor, placement: Placement, rank: int, n: int, *, copy: bool = True
) -> torch.Tensor:
    """This rank's piece of a full tensor in ``placement`` (a partial sum never stores state).

    ``copy=False`` lets a replicated piece share the full tensor's memory (a
    worker that owns the captured program has no one else to protect).
    """
    if isinstance(placement, Shard):
        return full.chunk(n, dim=placement.dim)[rank].clone()
    return full.clone() if copy else full.detach()


def _bind(node: torch.fx.Node, local: dict[str, list[torch.Tensor]], alias: dict[str, str]) -> Any:
    """``node``'s (args, kwargs) with each tensor argument replaced by its adapted local piece, in order."""
    cursor = {name: iter(values) for name, values in local.items()}
    return map_arg((node.args, node.kwargs), lambda n: next(cursor[alias.get(n.name, n.name)]))


def call_op(op: Op, values: list[torch.Tensor], split: Split | None, alias: dict[str, str]) -> Any:
    """``op`` on local pieces (one per tensor input): the whole operator, or the part ``split`` names
    (its arguments localized, its kernel swapped where the annotation says so)."""
    local: dict[str, list[torch.Tensor]] = {}
    for t, value in zip(op.inputs, values, strict=True):
        local.setdefault(t.name, []).append(value)
    args, kwargs = _bind(op.node, local, alias)
    kernel = op.target
    if split is not None:
        if op.anno.localize is not None:
            args, kwargs = op.anno.localize(tuple(args), dict(kwargs), op.anno, split)
        if op.anno.kernel is not None:
            kernel = op.anno.kernel(split)
    return kernel(*args, **kwargs)


class Runner:
    """One rank's executor of a :class:`~agentrt.parallelism.comm.Program`."""

    def __init__(
        self, program: Program, mesh: DeviceMesh, *, train: bool = False, copy: bool = True
    ) -> None:
        self.program = program
        self.mesh = mesh
        # op name -> the seconds of each call of it (adapters included), when set to a dict
        self.timer: dict[str, list[float]] | None = None
        self.rank = mesh.get_local_rank()
        self.n = program.ndevices
        graph = program.plan.graph
        self.state: dict[str, torch.Tensor] = {}
        for name, value in graph.state.items():
            piece = local_piece(value, program.storage[name], self.rank, self.n, copy=copy)
            trainable = graph.tensors[name].kind == "param" and name in graph.consumers
            if train and trainable and piece.is_floating_point():
                piece.requires_grad_(True)
            self.state[name] = piece

    @property
    def parameters(self) -> dict[str, torch.Tensor]:
        """Trainable local pieces by the module's parameter name."""
        graph = self.program.plan.graph
        return {graph.fqn[k]: v for k, v in self.state.items() if v.requires_grad}

    def _adapt(self, value: torch.Tensor, adapter: Adapter) -> torch.Tensor:
        if not adapter.forward and not adapter.backward:
            return value
        if value.requires_grad and value.is_floating_point():
            moved: torch.Tensor = _Move.apply(value, adapter, self.mesh)  # type: ignore[no-untyped-call]
            return moved
        return _run_steps(value, adapter.forward, self.mesh, adapter.tensor.shape)

    def forward(self, inputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """Run the program on the full user inputs (every rank passes the same); returns full outputs."""
        graph = self.program.plan.graph
        env: dict[str, torch.Tensor] = dict(self.state)
        for t, value in zip(graph.inputs, inputs, strict=True):
            env[t.name] = value
        # One adapter per (tensor, layout, gradient layout): its consumers' gradients are summed
        # before its backward collective runs, once.
        cache: dict[tuple[str, Any, Any], torch.Tensor] = {}
        for op, adapters in self.program.steps:
            start = time.perf_counter()
            values = []
            for t, adapter in zip(op.inputs, adapters, strict=True):
                if adapter.key not in cache:
                    cache[adapter.key] = self._adapt(env[t.name], adapter)
                values.append(cache[adapter.key])
            split = self.program.plan.transform_of(op)
            if split is not None and split.n > self.n:
                result = self._coshard(op, values, split)
            else:
                result = self._call(op, values, None if split is None else self.rank)
            if len(op.outputs) == 1 and not isinstance(result, (list, tuple)):
                env[op.outputs[0].name] = result
            else:
                for t, value in zip(op.outputs, result, strict=True):
                    env[t.name] = value
            if self.timer is not None:
                self.timer.setdefault(op.name, []).append(time.perf_counter() - start)
        return [self._adapt(env[a.tensor.name], a) for a in self.program.outputs]

    def _call(self, op: Op, values: list[torch.Tensor], index: int | None) -> Any:
        """``op`` on local pieces (one per tensor input); ``index``: which part of its split this is."""
        split = self.program.plan.transform_of(op)
        part = None if split is None or index is None else Split(split.label, split.n, index)
        return call_op(op, values, part, self.program.plan.graph.alias)

    def _coshard(self, op: Op, values: list[torch.Tensor], split: Split) -> Any:
        """Co-shard: this device runs its ``k`` consecutive parts of ``op`` one after another.

        Each part reads its chunk of the device's piece along the split label and
        is recomputed in the backward (activation checkpointing), so only one
        part's intermediates are alive at a time; the parts' outputs are
        concatenated (or summed, for a reduction the output lacks).
        """
        k = split.n // self.n
        label = split.label

        def part(c: int, *vals: torch.Tensor) -> Any:
            pieces = []
            for i, (v, labels) in enumerate(zip(vals, op.anno.inputs, strict=True)):
                if label in labels:
                    v = v.chunk(k, dim=labels.index(label))[c]
                elif label in op.anno.reduce and i in op.anno.additive and c:
                    v = torch.zeros_like(v)  # a partial-sum input is added by one part only
                pieces.append(v)
            return self._call(op, pieces, self.rank * k + c)

        grad = torch.is_grad_enabled() and any(v.requires_grad for v in values)
        parts = [
            checkpoint(part, c, *values, use_reentrant=False) if grad else part(c, *values)
            for c in range(k)
        ]
        multi = isinstance(parts[0], (list, tuple))
        outs = []
        for i, labels in enumerate(op.anno.outputs):
            got = [p[i] if multi else p for p in parts]
            if label in labels:
                outs.append(torch.cat(got, dim=labels.index(label)))
            else:
                outs.append(torch.stack(got).sum(0))
        return outs if multi else outs[0]

    def full_grads(self, *, keep: bool = True) -> dict[str, torch.Tensor]:
        """Every parameter's gradient, made whole (for checking against one device).

        Every rank must call it (the gathers are collective); ranks that pass
        ``keep=False`` drop each whole gradient at once and return nothing.
        """
        graph = self.program.plan.graph
        grads = {}
        for name, piece in self.state.items():
            if not piece.requires_grad:
                continue
            grad = piece.grad if piece.grad is not None else torch.zeros_like(piece)
            placement = self.program.storage[name]
            shape = graph.tensors[name].shape
            full = DTensor.from_local(
                grad.contiguous(),
                self.mesh,
                [placement],
                run_check=False,
                shape=torch.Size(shape),
                stride=_contiguous_stride(shape),
            )
            whole = full.redistribute(self.mesh, [Replicate()]).to_local()
            if keep:
                grads[graph.fqn[name]] = whole
        return grads


def init_mesh(n: int) -> DeviceMesh:
    """The 1-D mesh over the current process group (gloo on CPU, NCCL on CUDA)."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    return DeviceMesh(device, list(range(n)))


def init_mesh_2d(stages: int, width: int) -> DeviceMesh:
    """A (pipeline stage, position in the stage) mesh: ``mesh["tp"]`` is this rank's stage group,
    ``mesh["pp"]`` the ranks at the same position in every stage."""
    device = "cuda" if dist.get_backend() == "nccl" else "cpu"
    grid = torch.arange(stages * width).reshape(stages, width)
    return DeviceMesh(device, grid, mesh_dim_names=("pp", "tp"))
