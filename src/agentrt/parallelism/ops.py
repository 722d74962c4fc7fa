"""The annotation registry and the annotations of the ATen operators transformer models trace to.

Users extend it with :func:`register_op`, passing an einsum-like string for
fixed-rank operators or a function of the traced call for shape-dependent ones.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch

from agentrt.parallelism.anno import (
    Anno,
    Annotator,
    Labeler,
    Labels,
    OpView,
    Split,
    parse,
    shape_localizer,
)

aten = torch.ops.aten
_REGISTRY: dict[Any, Annotator] = {}


def register_op(target: Any, annotation: str | Annotator, *, additive: Sequence[int] = ()) -> None:
    """Register how ``target`` (an ATen overload or packet, or a custom op) may be split.

    ``annotation`` is a string such as ``"b s k+, n k+ -> b s n"`` or a function
    ``OpView -> Anno``; ``additive`` lists tensor inputs that must be value-split
    when a reduction label is split (a bias added after the reduction).
    """
    if isinstance(annotation, str):
        fixed = parse(annotation, additive=additive)
        _REGISTRY[target] = lambda view: fixed
    else:
        _REGISTRY[target] = annotation


def annotator_for(target: Any) -> Annotator | None:
    if target in _REGISTRY:
        return _REGISTRY[target]
    packet = getattr(target, "overloadpacket", None)
    return _REGISTRY.get(packet) if packet is not None else None


def _dims(prefix: str, rank: int) -> list[str]:
    return [f"{prefix}{i}" for i in range(rank)]


def _norm_dim(dim: int, rank: int) -> int:
    return dim + rank if dim < 0 else dim


def elementwise(view: OpView) -> Anno:
    """Broadcasting pointwise operator: a dimension an input broadcasts from size 1 is never split through it."""
    lab = Labeler()
    out = view.out_shapes[0]
    out_labels = _dims("d", len(out))
    inputs: list[Labels] = []
    for shape in view.in_shapes:
        offset = len(out) - len(shape)
        inputs.append(
            tuple(
                out_labels[offset + i] if size == out[offset + i] else lab.fresh()
                for i, size in enumerate(shape)
            )
        )
    return Anno(tuple(inputs), (tuple(out_labels),), frozen=frozenset(lab.frozen))


def replicate_only(view: OpView) -> Anno:
    """Known operator that is only ever replicated (index arithmetic, tensor creation)."""
    lab = Labeler()
    return Anno(
        tuple(tuple(lab.fresh() for _ in s) for s in view.in_shapes),
        tuple(tuple(lab.fresh() for _ in s) for s in view.out_shapes),
        frozen=frozenset(lab.frozen),
    )


def _linear(view: OpView) -> Anno:
    x = view.in_shapes[0]
    batch = tuple(_dims("d", len(x) - 1))
    inputs: list[Labels] = [(*batch, "k"), ("n", "k")]
    if len(view.in_shapes) == 3:
        inputs.append(("n",))
    additive = frozenset({2}) if len(view.in_shapes) == 3 else frozenset()
    return Anno(tuple(inputs), ((*batch, "n"),), reduce=frozenset({"k"}), additive=additive)


def _addmm(view: OpView) -> Anno:
    bias = view.in_shapes[0]
    bias_labels = ("m", "n")[2 - len(bias) :]
    bias_labels = tuple(
        label if size != 1 else "_b" for label, size in zip(bias_labels, bias, strict=True)
    )
    return Anno(
        (bias_labels, ("m", "k"), ("k", "n")),
        (("m", "n"),),
        reduce=frozenset({"k"}),
        frozen=frozenset({"_b"} & set(bias_labels)),
        additive=frozenset({0}),
    )


def _mm(view: OpView) -> Anno:
    return Anno((("m", "k"), ("k", "n")), (("m", "n"),), reduce=frozenset({"k"}))


def _bmm(view: OpView) -> Anno:
    return Anno((("b", "m", "k"), ("b", "k", "n")), (("b", "m", "n"),), reduce=frozenset({"k"}))


def _matmul(view: OpView) -> Anno:
    a, b = view.in_shapes
    out = view.out_shapes[0]
    if len(a) < 2 or len(b) < 2:
        return replicate_only(view)
    lab = Labeler()
    batch = _dims("d", len(out) - 2)

    def batch_labels(shape: tuple[int, ...]) -> list[str]:
        offset = len(out) - len(shape)
        return [
            batch[offset + i] if size == out[offset + i] else lab.fresh()
            for i, size in enumerate(shape[:-2])
        ]

    return Anno(
        ((*batch_labels(a), "m", "k"), (*batch_labels(b), "k", "n")),
        ((*batch, "m", "n"),),
        reduce=frozenset({"k"}),
        frozen=frozenset(lab.frozen),
    )


def _embedding(view: OpView) -> Anno:
    """Rows of the table (``V``) split Megatron's way: each device looks up its rows, the sum is whole."""
    ids = view.in_shapes[1]
    batch = tuple(_dims("d", len(ids)))
    return Anno(
        (("V", "E"), batch), ((*batch, "E"),), reduce=frozenset({"V"}), kernel=_vocab_embedding
    )


def _vocab_embedding(split: Split) -> Callable[..., torch.Tensor]:
    if split.label != "V":
        return aten.embedding.default

    def lookup(
        weight: torch.Tensor,
        ids: torch.Tensor,
        padding_idx: int = -1,
        scale_grad_by_freq: bool = False,
        sparse: bool = False,
    ) -> torch.Tensor:
        rows = weight.shape[0]
        start = split.index * rows
        local = ids - start
        outside = (local < 0) | (local >= rows)
        pad = padding_idx - start if 0 <= padding_idx - start < rows else -1
        out: torch.Tensor = aten.embedding.default(
            weight, local.masked_fill(outside, 0), pad, scale_grad_by_freq, sparse
        )
        return out.masked_fill(outside.unsqueeze(-1), 0.0)

    return lookup


def _sdpa(view: OpView) -> Anno:
    q, k = view.in_shapes[:2]
    lab = Labeler()
    batch = _dims("b", len(q) - 2)
    causal = bool(view.arg(5, "is_causal", False))
    heads_differ = len(q) >= 3 and q[-3] != k[-3]
    frozen = (
        {"S", "E"}
        | ({"L"} if causal else set())
        | ({batch[-1]} if heads_differ and batch else set())
    )
    inputs: list[Labels] = [(*batch, "L", "E"), (*batch, "S", "E"), (*batch, "S", "Ev")]
    if heads_differ and batch:
        inputs[1] = (*batch[:-1], lab.fresh(), "S", "E")
        inputs[2] = (*batch[:-1], lab.fresh(), "S", "Ev")
    if len(view.in_shapes) > 3:
        mask = view.in_shapes[3]
        full = (*q[:-1], k[-2])
        names = [*batch, "L", "S"]
        offset = len(full) - len(mask)
        inputs.append(
            tuple(
                names[offset + i] if size == full[offset + i] else lab.fresh()
                for i, size in enumerate(mask)
            )
        )
    return Anno(tuple(inputs), ((*batch, "L", "Ev"),), frozen=frozenset(frozen | lab.frozen))


def _along_dims(view: OpView, dims: Sequence[int], *, reduce: bool, keepdim: bool) -> Anno:
    """Reduction over ``dims`` (sum: partial outputs; mean and friends: frozen)."""
    x = view.in_shapes[0]
    names = _dims("d", len(x))
    lab = Labeler()
    axes = {_norm_dim(d, len(x)) for d in dims}
    out = [
        lab.fresh() if (i in axes) else name
        for i, name in enumerate(names)
        if keepdim or i not in axes
    ]
    kind = frozenset(names[i] for i in axes)
    return Anno(
        (tuple(names),),
        (tuple(out),),
        reduce=kind if reduce else frozenset(),
        frozen=frozenset(lab.frozen) | (frozenset() if reduce else kind),
    )


def _reduced_dims(view: OpView) -> list[int]:
    """The ``dim`` argument of a sum or mean as a list; none or ``[]`` means every dimension."""
    dims = view.arg(1, "dim", None)
    if dims is None or dims == []:
        return list(range(len(view.in_shapes[0])))
    return [dims] if isinstance(dims, int) else list(dims)


def _sum(view: OpView) -> Anno:
    keepdim = bool(view.arg(2, "keepdim", False))
    return _along_dims(view, _reduced_dims(view), reduce=True, keepdim=keepdim)


def _mean(view: OpView) -> Anno:
    keepdim = bool(view.arg(2, "keepdim", False))
    return _along_dims(view, _reduced_dims(view), reduce=False, keepdim=keepdim)


def _frozen_dims(view: OpView, dims: Sequence[int]) -> Anno:
    """Pointwise except along ``dims`` (softmax, cumsum, slice, cat): those stay whole."""
    base = elementwise(view)
    rank = len(view.out_shapes[0])
    axes = {base.outputs[0][_norm_dim(d, rank)] for d in dims}
    return Anno(base.inputs, base.outputs, frozen=base.frozen | axes)


def _softmax(view: OpView) -> Anno:
    return _frozen_dims(view, [view.arg(1, "dim")])


def _norm(view: OpView) -> Anno:
    """layer_norm / rms_norm: the normalized trailing dimensions are frozen; weight and bias carry them."""
    x = view.in_shapes[0]
    normalized = len(view.arg(1, "normalized_shape"))
    names = tuple(_dims("d", len(x)))
    tail = names[len(x) - normalized :]
    inputs = [names] + [tail for _ in view.in_shapes[1:]]
    return Anno(tuple(inputs), (names,), frozen=frozenset(tail))


def _transpose(view: OpView) -> Anno:
    x = view.in_shapes[0]
    names = _dims("d", len(x))
    a, b = (_norm_dim(view.arg(i, "dim" + str(i - 1)), len(x)) for i in (1, 2))
    out = list(names)
    out[a], out[b] = out[b], out[a]
    return Anno((tuple(names),), (tuple(out),))


def _t(view: OpView) -> Anno:
    names = tuple(_dims("d", len(view.in_shapes[0])))
    return Anno((names,), (tuple(reversed(names)),))


def _permute(view: OpView) -> Anno:
    x = view.in_shapes[0]
    names = _dims("d", len(x))
    order = [_norm_dim(d, len(x)) for d in view.arg(1, "dims")]
    return Anno((tuple(names),), (tuple(names[d] for d in order),))


def reshape_groups(src: Sequence[int], dst: Sequence[int]) -> list[tuple[list[int], list[int]]]:
    """Pair up the dimensions of a reshape: each group has the same element count on both sides."""
    groups: list[tuple[list[int], list[int]]] = []
    i = j = 0
    while i < len(src) or j < len(dst):
        if i < len(src) and src[i] == 1 and (j >= len(dst) or dst[j] != 1):
            groups.append(([i], []))
            i += 1
        elif j < len(dst) and dst[j] == 1 and (i >= len(src) or src[i] != 1):
            groups.append(([], [j]))
            j += 1
        else:
            gi, gj, pi, pj = [i], [j], src[i], dst[j]
            while pi != pj:
                if pi < pj:
                    i += 1
                    gi.append(i)
                    pi *= src[i]
                else:
                    j += 1
                    gj.append(j)
                    pj *= dst[j]
            groups.append((gi, gj))
            i += 1
            j += 1
    return groups


def _reshape_anno(
    src: tuple[int, ...], dst: tuple[int, ...]
) -> tuple[Labels, Labels, frozenset[str]]:
    lab = Labeler()
    ins: list[str] = [""] * len(src)
    outs: list[str] = [""] * len(dst)
    for number, (gi, gj) in enumerate(reshape_groups(src, dst)):
        lead_in = next((d for d in gi if src[d] != 1), None)
        lead_out = next((d for d in gj if dst[d] != 1), None)
        shared = f"g{number}" if lead_in is not None and lead_out is not None else None
        for d in gi:
            ins[d] = shared if (d == lead_in and shared) else lab.fresh()
        for d in gj:
            outs[d] = shared if (d == lead_out and shared) else lab.fresh()
    return tuple(ins), tuple(outs), frozenset(lab.frozen)


def _reshape(view: OpView) -> Anno:
    ins, outs, frozen = _reshape_anno(view.in_shapes[0], view.out_shapes[0])
    return Anno(
        (ins,),
        (outs,),
        frozen=frozen,
        localize=shape_localizer(1, "size" if view.target is aten.view.default else "shape"),
    )


def _reshape_no_args(view: OpView) -> Anno:
    """flatten / unsqueeze / squeeze: a reshape whose arguments need no change when split."""
    ins, outs, frozen = _reshape_anno(view.in_shapes[0], view.out_shapes[0])
    return Anno((ins,), (outs,), frozen=frozen)


def _expand(view: OpView) -> Anno:
    x, out = view.in_shapes[0], view.out_shapes[0]
    lab = Labeler()
    names = _dims("d", len(out))
    offset = len(out) - len(x)
    ins = tuple(
        names[offset + i] if size == out[offset + i] else lab.fresh() for i, size in enumerate(x)
    )
    return Anno(
        (ins,), (tuple(names),), frozen=frozenset(lab.frozen), localize=shape_localizer(1, "size")
    )


def _slice(view: OpView) -> Anno:
    x = view.in_shapes[0]
    dim = _norm_dim(view.arg(1, "dim", 0), len(x))
    start, end, step = view.arg(2, "start", None), view.arg(3, "end", None), view.arg(4, "step", 1)
    if (start in (None, 0)) and (end is None or end >= x[dim]) and step == 1:
        return elementwise(view)
    return _frozen_dims(view, [dim])


def _cat(view: OpView) -> Anno:
    out = view.out_shapes[0]
    dim = _norm_dim(view.arg(1, "dim", 0), len(out))
    lab = Labeler()
    names = _dims("d", len(out))
    inputs = []
    for shape in view.in_shapes:
        if len(shape) != len(out):  # cat skips empty 1-D tensors
            inputs.append(tuple(lab.fresh() for _ in shape))
            continue
        inputs.append(tuple(lab.fresh() if d == dim else names[d] for d in range(len(out))))
    outs = list(names)
    outs[dim] = lab.fresh()
    return Anno(tuple(inputs), (tuple(outs),), frozen=frozenset(lab.frozen))


def _split(view: OpView) -> Anno:
    x = view.in_shapes[0]
    dim = _norm_dim(view.arg(2, "dim", 0), len(x))
    lab = Labeler()
    names = _dims("d", len(x))
    ins = list(names)
    ins[dim] = lab.fresh()
    outs = []
    for _ in view.out_shapes:
        o = list(names)
        o[dim] = lab.fresh()
        outs.append(tuple(o))
    return Anno((tuple(ins),), tuple(outs), frozen=frozenset(lab.frozen))


def _cumsum(view: OpView) -> Anno:
    return _frozen_dims(view, [view.arg(1, "dim")])


def _cross_entropy(view: OpView) -> Anno:
    """cross_entropy_loss(input (N, C), target (N,)): rows split; the sum of row losses is then partial."""
    x = view.in_shapes[0]
    if len(x) != 2:
        return replicate_only(view)
    reduction = view.arg(3, "reduction", 1)
    inputs: list[Labels] = [("N", "C"), ("N",)] + [("C",) for _ in view.in_shapes[2:]]
    if reduction == 0:
        return Anno(tuple(inputs), (("N",),), frozen=frozenset({"C"}))
    if reduction == 2:
        return Anno(tuple(inputs), ((),), reduce=frozenset({"N"}), frozen=frozenset({"C"}))
    # A mean divides by the count of non-ignored targets over all rows, which no row chunk knows.
    return Anno(tuple(inputs), ((),), frozen=frozenset({"N", "C"}))


_ELEMENTWISE = [
    "abs",
    "add",
    "sub",
    "mul",
    "div",
    "neg",
    "pow",
    "rsqrt",
    "sqrt",
    "exp",
    "log",
    "tanh",
    "sigmoid",
    "silu",
    "gelu",
    "relu",
    "cos",
    "sin",
    "eq",
    "ne",
    "le",
    "lt",
    "ge",
    "gt",
    "__and__",
    "__or__",
    "bitwise_and",
    "bitwise_or",
    "logical_not",
    "logical_and",
    "where",
    "masked_fill",
    "maximum",
    "minimum",
    "clamp",
    "to",
    "_to_copy",
    "clone",
    "contiguous",
    "alias",
    "detach",
    "dropout",
    "type_as",
    "erf",
    "reciprocal",
    "square",
    "softplus",
    "lift_fresh_copy",
]
_REPLICATE_ONLY = [
    "arange",
    "full",
    "full_like",
    "zeros",
    "zeros_like",
    "ones",
    "ones_like",
    "new_ones",
    "new_zeros",
    "new_full",
    "new_empty",
    "empty",
    "scalar_tensor",
    "index",
    "diff",
    "any",
    "all",
    "gather",
    "triu",
    "tril",
    "item",
    "_local_scalar_dense",
    "sym_size",
]


def _register_builtins() -> None:
    for name in _ELEMENTWISE:
        if hasattr(aten, name):
            register_op(getattr(aten, name), elementwise)
    for name in _REPLICATE_ONLY:
        if hasattr(aten, name):
            register_op(getattr(aten, name), replicate_only)
    table: dict[str, Annotator] = {
        "linear": _linear,
        "addmm": _addmm,
        "mm": _mm,
        "bmm": _bmm,
        "matmul": _matmul,
        "embedding": _embedding,
        "scaled_dot_product_attention": _sdpa,
        "sum": _sum,
        "mean": _mean,
        "_softmax": _softmax,
        "softmax": _softmax,
        "_log_softmax": _softmax,
        "log_softmax": _softmax,
        "layer_norm": _norm,
        "rms_norm": _norm,
        "transpose": _transpose,
        "t": _t,
        "permute": _permute,
        "view": _reshape,
        "reshape": _reshape,
        "_unsafe_view": _reshape,
        "flatten": _reshape_no_args,
        "unsqueeze": _reshape_no_args,
        "squeeze": _reshape_no_args,
        "expand": _expand,
        "slice": _slice,
        "cat": _cat,
        "split": _split,
        "split_with_sizes": _split,
        "chunk": _split,
        "cumsum": _cumsum,
        "cross_entropy_loss": _cross_entropy,
    }
    for name, annotator in table.items():
        register_op(getattr(aten, name), annotator)


_register_builtins()
