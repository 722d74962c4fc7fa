"""Dimension annotations: which dimensions of an operator can be split, and what a split does.

An annotation labels every dimension of every tensor input and output of one
operator call, einsum-style (``"b s k+, n k+, n -> b s n"`` for a linear).
Splitting an operator on a label splits every tensor that has it:

- a plain label is *spatial*: the outputs that carry it are split too;
- ``+`` marks a *reduction*: outputs without it become partial sums (a value
  split), and the inputs listed as ``additive`` (a bias) must be value-split;
- ``^`` marks a dimension that cannot be split (a softmax or norm axis).

An operator whose split needs more than sliced arguments supplies a
``kernel`` for its sub-operators (the vocabulary-parallel embedding does).

A label shared by a reshape's input and output (``b s (h d) -> b s h d``)
ties the reshape group's leading dimensions, so splitting heads after a view
splits the hidden dimension before it. Labels are computed per call from the
traced shapes, so broadcasting and size-1 dimensions are handled exactly.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

Labels = tuple[str, ...]


@dataclass(frozen=True)
class Split:
    """One sub-operator's share of a partition: label ``label`` cut in ``n``, this is part ``index``."""

    label: str
    n: int
    index: int


Localizer = Callable[
    [tuple[Any, ...], dict[str, Any], "Anno", Split], tuple[tuple[Any, ...], dict[str, Any]]
]


@dataclass(frozen=True)
class Anno:
    """The labels of one operator call; see the module docstring."""

    inputs: tuple[Labels, ...]
    outputs: tuple[Labels, ...]
    reduce: frozenset[str] = frozenset()
    frozen: frozenset[str] = frozenset()
    additive: frozenset[int] = frozenset()
    localize: Localizer | None = field(default=None, compare=False)
    # A different computation for a sub-operator, when slicing the arguments is not enough
    # (a vocabulary-split embedding looks up only its rows): Split -> callable like the target.
    kernel: Callable[[Split], Callable[..., Any]] | None = field(default=None, compare=False)

    @property
    def labels(self) -> list[str]:
        """Every label, in first-seen order."""
        seen: dict[str, None] = {}
        for labels in itertools.chain(self.inputs, self.outputs):
            seen.update(dict.fromkeys(labels))
        return list(seen)

    def splittable(self) -> list[str]:
        return [label for label in self.labels if label not in self.frozen]

    def __str__(self) -> str:
        def fmt(labels: Labels) -> str:
            return " ".join(
                label + ("+" if label in self.reduce else "^" if label in self.frozen else "")
                for label in labels
            )

        return (
            ", ".join(fmt(t) for t in self.inputs)
            + " -> "
            + ", ".join(fmt(t) for t in self.outputs)
        )


def parse(text: str, *, additive: Sequence[int] = ()) -> Anno:
    """Parse ``"a b+, c b+ -> a c"``; ``1`` marks a size-1 (broadcast) dimension, never split."""
    if "->" not in text:
        raise ValueError(f"annotation {text!r} has no '->'")
    left, right = text.split("->", 1)
    reduce: set[str] = set()
    frozen: set[str] = set()
    fresh = itertools.count()

    def tensors(side: str) -> tuple[Labels, ...]:
        out = []
        for chunk in side.split(","):
            labels = []
            for token in chunk.split():
                if token == "1":
                    name = f"_{next(fresh)}"
                    frozen.add(name)
                elif token.endswith("+"):
                    name = token[:-1]
                    reduce.add(name)
                elif token.endswith("^"):
                    name = token[:-1]
                    frozen.add(name)
                else:
                    name = token
                if not name or not (name.replace("_", "a").isalnum()):
                    raise ValueError(f"annotation {text!r}: bad label {token!r}")
                labels.append(name)
            out.append(tuple(labels))
        return tuple(out)

    inputs, outputs = tensors(left), tensors(right)
    if reduce & frozen:
        raise ValueError(f"annotation {text!r}: a label is both '+' and '^'")
    return Anno(inputs, outputs, frozenset(reduce), frozenset(frozen), frozenset(additive))


@dataclass
class OpView:
    """What an annotator sees of one call: its args and the traced shapes of its tensor inputs and outputs."""

    target: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    in_shapes: list[tuple[int, ...]]
    out_shapes: list[tuple[int, ...]]

    def arg(self, index: int, name: str, default: Any = None) -> Any:
        if index < len(self.args):
            return self.args[index]
        return self.kwargs.get(name, default)


Annotator = Callable[[OpView], Anno]


class Labeler:
    """Hands out labels: ``d0, d1...`` for shared ones and ``_0, _1...`` for frozen singletons."""

    def __init__(self) -> None:
        self._fresh = itertools.count()
        self.frozen: set[str] = set()

    def fresh(self) -> str:
        name = f"_{next(self._fresh)}"
        self.frozen.add(name)
        return name


def shape_localizer(arg_index: int, name: str) -> Localizer:
    """Divide the entry of a shape argument (view, reshape, expand) that lies on the split output dimension."""

    def localize(
        args: tuple[Any, ...], kwargs: dict[str, Any], anno: Anno, split: Split
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        in_args = arg_index < len(args)
        shape = list(args[arg_index] if in_args else kwargs[name])
        for dim, label in enumerate(anno.outputs[0]):
            if label == split.label and shape[dim] != -1:
                shape[dim] //= split.n
        if in_args:
            return (*args[:arg_index], shape, *args[arg_index + 1 :]), kwargs
        return args, {**kwargs, name: shape}

    return localize
