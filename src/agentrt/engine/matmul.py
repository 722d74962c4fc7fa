"""The weight of one projection and how the lean decoder multiplies by it.

A :class:`Weight` is called with ``[rows, in_features]`` activations and
returns ``[rows, out_features]``. The dense kind keeps the model's own
tensor; on CPU in float32 it also keeps a oneDNN-packed copy for
decode-sized row counts, which streams the weight from memory faster than
MKL's sgemm (see ``linear.py`` for the measurements).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agentrt.engine.linear import MAX_PACKED_ROWS, PACKING_ROWS_HINT, packing_available


class Weight:
    """A dense ``[out_features, in_features]`` weight and an optional bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool) -> None:
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.packed: torch.Tensor | None = None
        if (
            pack
            and weight.device.type == "cpu"
            and weight.dtype == torch.float32
            and packing_available()
        ):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS_HINT)

    @property
    def nbytes(self) -> int:
        """Bytes one multiplication streams from memory (the dense weight and bias)."""
        size = self.weight.numel() * self.weight.element_size()
        return size + (self.bias.numel() * self.bias.element_size() if self.bias is not None else 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and x.shape[0] <= MAX_PACKED_ROWS:
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.packed, self.bias, "none", [], ""
            )
            return out
        return F.linear(x, self.weight, self.bias)


def fuse(
    weights: list[torch.Tensor], biases: list[torch.Tensor | None]
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Stack projections that read the same input into one ``[sum(out), in]`` weight.

    The biases are stacked too; a projection without one gets zeros, and
    the fused bias is ``None`` only when none has one.
    """
    weight = torch.cat(weights, dim=0).contiguous()
    if all(b is None for b in biases):
        return weight, None
    parts = [
        b.detach() if b is not None else weight.new_zeros(w.shape[0])
        for w, b in zip(weights, biases, strict=True)
    ]
    return weight, torch.cat(parts)
