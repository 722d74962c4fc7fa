"""pTensor and vTensor: the whole tensor of the single-device model and the piece one sub-operator touches.

A layout of a pTensor over ``n`` devices is a DTensor placement on a 1-D mesh
(``Shard(d)``, ``Replicate()``, ``Partial()``); :func:`vtensors` turns it into
the ``n`` vTensors it stands for, which is what the coverage check reads.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch
from torch.distributed.tensor import Partial, Placement, Replicate, Shard


@dataclass(frozen=True)
class PTensor:
    """A full tensor of the captured graph: a parameter, buffer, input, constant or an operator's output."""

    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    kind: str  # "param" | "buffer" | "input" | "constant" | "activation"

    @property
    def nbytes(self) -> int:
        numel = 1
        for size in self.shape:
            numel *= size
        return (
            numel
            * (
                torch.finfo(self.dtype).bits
                if self.dtype.is_floating_point
                else _int_bits(self.dtype)
            )
            // 8
        )


def _int_bits(dtype: torch.dtype) -> int:
    return 8 if dtype == torch.bool else torch.iinfo(dtype).bits


@dataclass(frozen=True)
class VTensor:
    """A piece of a pTensor: one ``[start, end)`` range per dimension and a value split.

    ``value == (i, k)`` means this piece is the i-th of k addends whose sum is
    the pTensor over ``ranges`` (a partial sum); ``(0, 1)`` is the value itself.
    """

    ptensor: PTensor
    ranges: tuple[tuple[int, int], ...]
    value: tuple[int, int] = (0, 1)

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(end - start for start, end in self.ranges)

    def overlaps(self, other: VTensor) -> bool:
        return all(
            a0 < b1 and b0 < a1
            for (a0, a1), (b0, b1) in zip(self.ranges, other.ranges, strict=True)
        )


def vtensors(ptensor: PTensor, placement: Placement, n: int) -> list[VTensor]:
    """The n pieces (device i holds the i-th) that ``placement`` over n devices gives ``ptensor``."""
    full = tuple((0, size) for size in ptensor.shape)
    if isinstance(placement, Replicate):
        return [VTensor(ptensor, full) for _ in range(n)]
    if isinstance(placement, Partial):
        return [VTensor(ptensor, full, (i, n)) for i in range(n)]
    if isinstance(placement, Shard):
        dim = placement.dim
        size = ptensor.shape[dim]
        if size % n:
            raise ValueError(
                f"{ptensor.name}: dimension {dim} of size {size} does not divide by {n}"
            )
        step = size // n
        pieces = []
        for i in range(n):
            ranges = list(full)
            ranges[dim] = (i * step, (i + 1) * step)
            pieces.append(VTensor(ptensor, tuple(ranges)))
        return pieces
    raise TypeError(f"unsupported placement {placement!r}")


def covers(pieces: list[VTensor]) -> bool:
    """Whether the pieces rebuild their pTensor: each index covered by whole values or complete partial sums.

    Checked per disjoint block of the index space, on the ranges the pieces
    themselves cut, so it stays cheap for the handful of pieces a layout has.
    """
    if not pieces:
        return False
    ptensor = pieces[0].ptensor
    cuts = [
        sorted(
            {0, size}
            | {r[d][0] for r in (p.ranges for p in pieces)}
            | {r[d][1] for r in (p.ranges for p in pieces)}
        )
        for d, size in enumerate(ptensor.shape)
    ]
    blocks: list[tuple[tuple[int, int], ...]] = [()]
    for dim_cuts in cuts:
        blocks = [(*b, (lo, hi)) for b in blocks for lo, hi in itertools.pairwise(dim_cuts)]
    for block in blocks:
        probe = VTensor(ptensor, block)
        parts = [p for p in pieces if p.overlaps(probe) or not block]
        if any(p.value == (0, 1) for p in parts):
            continue
        by_split: dict[int, set[int]] = {}
        for p in parts:
            by_split.setdefault(p.value[1], set()).add(p.value[0])
        if not any(len(idx) == k for k, idx in by_split.items()):
            return False
    return True
