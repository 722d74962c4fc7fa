"""Capture a model as a graph of annotated operators with ``torch.export``.

transformers 5 dropped torch.fx tracing, and ``torch.export`` (non-strict,
the training IR: ATen operators before decomposition) captures its models as
they are. Every call becomes an :class:`Op` whose tensors are
:class:`~agentrt.parallelism.tensor.PTensor` s and whose annotation comes from
the registry; an operator without one is kept, replicated, and named in a
warning so a user knows which annotation to register.
"""

from __future__ import annotations

import operator
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.export import ExportedProgram
from torch.export.graph_signature import InputKind, OutputKind, TensorArgument
from torch.fx.node import map_arg
from torch.utils import _pytree as pytree

from agentrt.log import get_logger
from agentrt.parallelism.anno import Anno, OpView
from agentrt.parallelism.errors import CaptureError
from agentrt.parallelism.ops import annotator_for, replicate_only
from agentrt.parallelism.tensor import PTensor

_KINDS = {
    InputKind.PARAMETER: "param",
    InputKind.BUFFER: "buffer",
    InputKind.CONSTANT_TENSOR: "constant",
    InputKind.USER_INPUT: "input",
}


@dataclass
class Op:
    """One operator call: its fx node, its tensor inputs and outputs in order, and its annotation."""

    name: str
    node: torch.fx.Node
    inputs: list[PTensor]
    outputs: list[PTensor]
    anno: Anno
    known: bool

    @property
    def target(self) -> Any:
        return self.node.target

    def __str__(self) -> str:
        return f"{self.name} = {self.target}({self.anno})"


@dataclass
class Graph:
    """The captured model: operators in program order and the tensors between them."""

    program: ExportedProgram
    ops: list[Op]
    tensors: dict[str, PTensor]
    inputs: list[PTensor]  # user inputs, in the order the flat inputs are given
    outputs: list[PTensor]
    state: dict[str, torch.Tensor]  # parameter/buffer/constant values by placeholder name
    fqn: dict[str, str]  # placeholder name -> the module's parameter or buffer name
    unknown: list[str] = field(default_factory=list)
    alias: dict[str, str] = field(default_factory=dict)  # getitem node -> the tensor it selects
    producer: dict[str, Op] = field(default_factory=dict)
    consumers: dict[str, list[Op]] = field(default_factory=dict)
    _by_name: dict[str, Op] = field(default_factory=dict, repr=False)

    def op(self, name: str) -> Op:
        if len(self._by_name) != len(self.ops):
            self._by_name = {op.name: op for op in self.ops}
        if name not in self._by_name:
            raise KeyError(f"no operator named {name!r}")
        return self._by_name[name]

    def flat_inputs(
        self, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
    ) -> list[torch.Tensor]:
        leaves = [
            x for x in pytree.tree_leaves((args, kwargs or {})) if isinstance(x, torch.Tensor)
        ]
        if len(leaves) != len(self.inputs):
            raise CaptureError(f"expected {len(self.inputs)} tensor inputs, got {len(leaves)}")
        return leaves


def capture(
    model: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any] | None = None
) -> Graph:
    """Export ``model`` on example inputs and annotate every operator call."""
    try:
        program = torch.export.export(model, args, kwargs=kwargs or {}, strict=False)
    except (
        Exception
    ) as exc:  # torch.export raises many types; the user needs the first line, not the trace
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CaptureError(
            f"torch.export could not capture {type(model).__name__}: {first}"
        ) from exc
    return from_program(program)


def _ptensor(name: str, value: Any, kind: str) -> PTensor:
    return PTensor(name, tuple(int(s) for s in value.shape), value.dtype, kind)


def from_program(program: ExportedProgram) -> Graph:
    sig = program.graph_signature
    if any(spec.kind != OutputKind.USER_OUTPUT for spec in sig.output_specs):
        raise CaptureError(
            "the model mutates a buffer or input in its forward; only pure forwards are supported"
        )
    tensors: dict[str, PTensor] = {}
    state: dict[str, torch.Tensor] = {}
    fqn: dict[str, str] = {}
    inputs: list[PTensor] = []
    for spec in sig.input_specs:
        if not isinstance(spec.arg, TensorArgument):
            continue
        name, kind = spec.arg.name, _KINDS.get(spec.kind, "constant")
        node = next(n for n in program.graph.nodes if n.name == name)
        tensors[name] = _ptensor(name, node.meta["val"], kind)
        if kind == "input":
            inputs.append(tensors[name])
        else:
            value = (
                program.state_dict.get(spec.target)
                if spec.target in program.state_dict
                else program.constants[spec.target]
            )
            state[name] = value.detach()
            fqn[name] = spec.target
    alias: dict[str, str] = {}
    ops: list[Op] = []
    unknown: dict[str, None] = {}
    for node in program.graph.nodes:
        if node.op != "call_function":
            continue
        val = node.meta.get("val")
        if node.target is operator.getitem:
            alias[node.name] = f"{node.args[0].name}.{node.args[1]}"
            continue
        if val is None:
            continue  # runtime assertions on metadata: nothing to compute
        if isinstance(val, (list, tuple)):
            outs = [_ptensor(f"{node.name}.{i}", v, "activation") for i, v in enumerate(val)]
        else:
            outs = [_ptensor(node.name, val, "activation")]
        for t in outs:
            tensors[t.name] = t
        ins = tensor_inputs(node, lambda name: tensors[alias.get(name, name)])
        view = OpView(
            node.target,
            tuple(node.args),
            dict(node.kwargs),
            [t.shape for t in ins],
            [t.shape for t in outs],
        )
        annotator = annotator_for(node.target)
        known = annotator is not None
        try:
            anno = annotator(view) if annotator is not None else replicate_only(view)
        except (IndexError, KeyError, TypeError, ValueError, ZeroDivisionError) as exc:
            get_logger("agentrt.parallelism").warning(
                "parallel.annotation_failed", op=node.name, target=str(node.target), error=str(exc)
            )
            anno, known = replicate_only(view), False
        _check_anno(node.name, anno, ins, outs)
        if not known:
            unknown[str(node.target)] = None
        ops.append(Op(node.name, node, ins, outs, anno, known))
    out_node = next(n for n in program.graph.nodes if n.op == "output")
    outputs = [
        tensors[alias.get(n.name, n.name)] for n in out_node.args[0] if isinstance(n, torch.fx.Node)
    ]
    graph = Graph(program, ops, tensors, inputs, outputs, state, fqn, list(unknown), alias)
    for op in ops:
        for t in op.outputs:
            graph.producer[t.name] = op
        for t in op.inputs:
            graph.consumers.setdefault(t.name, []).append(op)
    if unknown:
        get_logger("agentrt.parallelism").warning(
            "parallel.unknown_ops_replicated",
            ops=list(unknown),
            hint="agentrt.parallelism.register_op(target, annotation)",
        )
    return graph


def tensor_inputs(node: torch.fx.Node, lookup: Callable[[str], Any]) -> list[Any]:
    """What ``lookup`` gives for each tensor argument of ``node``, in the order ``map_arg`` visits them."""
    found: list[Any] = []

    def visit(arg: torch.fx.Node) -> torch.fx.Node:
        found.append(lookup(arg.name))
        return arg

    map_arg((node.args, node.kwargs), visit)
    return found


def _check_anno(name: str, anno: Anno, ins: list[PTensor], outs: list[PTensor]) -> None:
    """An annotation must label every dimension of every tensor, or the split would be undefined."""
    if len(anno.inputs) != len(ins) or len(anno.outputs) != len(outs):
        raise CaptureError(
            f"annotation of {name} labels {len(anno.inputs)}/{len(anno.outputs)} tensors, the call has {len(ins)}/{len(outs)}"
        )
    for labels, t in zip((*anno.inputs, *anno.outputs), (*ins, *outs), strict=True):
        if len(labels) != len(t.shape):
            raise CaptureError(
                f"annotation of {name} gives {t.name} {len(labels)} labels for {len(t.shape)} dimensions"
            )
