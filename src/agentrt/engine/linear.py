"""Linear layers with oneDNN-packed weights for the small row counts of decode steps on CPU.

``F.linear`` hands ``x @ W.T`` to MKL's sgemm. With few rows (a decode step
has one per running sequence) each weight element feeds only a few
multiply-adds, so the speed is set by how well the kernel streams the weight
from memory; oneDNN's inner product over a weight reordered once into its
blocked layout streams it better than MKL on this project's CPU hosts, from
:data:`MIN_PACKED_ROWS` rows up. Below that (one to three rows, a single
stream's decode step) MKL's matrix-vector path is the faster one. In
bfloat16 the packed copy wins from one row: the dense path reorders the
weight for every call.

The packed copy is kept next to the dense weight, which costs one more copy
of the linear weights in memory (set ``EngineConfig.packed_linears = false``
to avoid it); for other row counts (one to three rows, long prefill chunks)
the dense weight and ``F.linear`` are used, since they are faster there. The
copy is made once, when the engine starts: weights changed afterwards are
not seen.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from agentrt.log import get_logger

log = get_logger(__name__)

MIN_PACKED_ROWS = 4
MAX_PACKED_ROWS = 256
# The row count oneDNN tunes the packed layout for; any row count works with it.
PACKING_ROWS_HINT = 32


def packed_rows(rows: int, dtype: torch.dtype = torch.float32) -> bool:
    """Whether a product over ``rows`` rows of a ``dtype`` weight is faster with the packed copy.

    A float32 weight from :data:`MIN_PACKED_ROWS` rows (MKL's matrix-vector
    path wins below); a bfloat16 one from a single row, since its dense path
    has no fast matrix-vector kernel and reorders the weight for every call.
    """
    low = 1 if dtype == torch.bfloat16 else MIN_PACKED_ROWS
    return low <= rows <= MAX_PACKED_ROWS


def packs(weight: torch.Tensor) -> bool:
    """Whether a lean-decoder weight gets a packed copy: a CPU float32 one, or a
    bfloat16 one on a CPU with native bfloat16 instructions (elsewhere oneDNN
    emulates them, slower than the dense path)."""
    if weight.device.type != "cpu" or not packing_available():
        return False
    if weight.dtype == torch.float32:
        return True
    from agentrt.engine.loader import cpu_has_bf16_instructions

    return weight.dtype == torch.bfloat16 and cpu_has_bf16_instructions()


def packing_available() -> bool:
    """Whether this torch build has oneDNN and the linear packing ops (CPU builds do)."""
    ops = torch.ops.mkldnn
    return bool(
        torch.backends.mkldnn.is_available()  # type: ignore[no-untyped-call]
        and hasattr(ops, "_reorder_linear_weight")
        and hasattr(ops, "_linear_pointwise")
    )


class PackedLinear(nn.Linear):
    """An ``nn.Linear`` that multiplies 4 to 256 rows with a oneDNN-packed copy of its weight."""

    packed_weight: torch.Tensor

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.numel() // self.in_features
        if not packed_rows(rows) or x.dtype != self.packed_weight.dtype:
            return F.linear(x, self.weight, self.bias)
        out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
            x.reshape(rows, self.in_features), self.packed_weight, self.bias, "none", [], ""
        )
        return out.reshape(*x.shape[:-1], self.out_features)


def pack_linears(model: nn.Module) -> int:
    """Turn every plain float32 CPU ``nn.Linear`` of ``model`` into a :class:`PackedLinear`.

    Only the class changes and a packed copy is added: parameters, tied
    weights (``lm_head`` sharing the embedding) and hooks stay. Subclasses of
    ``nn.Linear`` (quantised layers, for example) are left alone. Returns how
    many layers were packed.
    """
    if not packing_available():
        log.info("linear_packing_unavailable")
        return 0
    packed = 0
    for module in model.modules():
        if type(module) is not nn.Linear:
            continue
        weight = module.weight
        if weight.device.type != "cpu" or weight.dtype != torch.float32:
            continue
        with torch.no_grad():
            copy = torch.ops.mkldnn._reorder_linear_weight(weight.detach(), PACKING_ROWS_HINT)
        module.__class__ = PackedLinear
        module.packed_weight = copy
        packed += 1
    return packed
