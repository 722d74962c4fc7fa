"""The weight of one projection and how the lean decoder multiplies by it.

A :class:`Weight` is called with ``[rows, in_features]`` activations and
returns ``[rows, out_features]``. The dense kind keeps the model's own
tensor; on CPU it also keeps a oneDNN-packed copy (float32, or bfloat16 on
CPUs with native bfloat16) for decode row counts, which streams the weight
from memory faster than the dense kernels (see :mod:`agentrt.engine.linear`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from agentrt.engine.linear import PACKING_ROWS_HINT, packed_rows, packs


class Weight:
    """A dense ``[out_features, in_features]`` weight and an optional bias."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool) -> None:
        self.weight = weight
        self.bias = bias
        self.out_features, self.in_features = weight.shape
        self.packed: torch.Tensor | None = None
        if pack and packs(weight):
            self.packed = torch.ops.mkldnn._reorder_linear_weight(weight, PACKING_ROWS_HINT)

    @property
    def nbytes(self) -> int:
        """Bytes one decode-sized multiplication streams from memory (weight and bias)."""
        return _size(self.weight) + (_size(self.bias) if self.bias is not None else 0)

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self.packed is not None and packed_rows(x.shape[0], self.weight.dtype):
            if torch.compiler.is_compiling():
                if self.weight.dtype != torch.float32:
                    # bfloat16 graphs keep the dense product: there the custom-op wrapper's
                    # per-call Python dispatch outweighs what the packed layout saves.
                    return F.linear(x, self.weight, self.bias)
                compiled: torch.Tensor = packed_linear(x, self.packed, self.bias, self.out_features)
                return compiled
            out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(
                x, self.packed, self.bias, "none", [], ""
            )
            return out
        return F.linear(x, self.weight, self.bias)


@torch.library.custom_op("agentrt::packed_linear", mutates_args=())
def packed_linear(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    """``x @ W.T + b`` with oneDNN's packed ``W``, as one operator opaque to ``torch.compile``.

    Inductor lowers ``mkldnn._linear_pointwise`` only for weights it packed
    itself (frozen graph constants); wrapped, a compiled graph calls the
    engine's packed kernel like any other external kernel. Eager calls skip
    the wrapper (it costs tens of microseconds a call).
    """
    out: torch.Tensor = torch.ops.mkldnn._linear_pointwise(x, packed, bias, "none", [], "")
    return out


@packed_linear.register_fake
def _packed_linear_fake(
    x: torch.Tensor, packed: torch.Tensor, bias: torch.Tensor | None, out_features: int
) -> torch.Tensor:
    return x.new_empty(x.shape[0], out_features)


def _size(t: torch.Tensor) -> int:
    return t.numel() * t.element_size()


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


# Row counts up to which a weight-only kernel beats the dense weight; above them (wider
# decode batches, prefill chunks) the dense copy multiplies. The quantized kernels
# dequantize for every block of rows, so their cost grows with the rows, while the dense
# GEMM's barely does. Crossovers measured on SmolLM2-135M's projection shapes (30 layers of
# weights, one thread, CPU time, avx512_bf16 host): bfloat16 int8 8, int4 12-16; float32
# (unpacked sgemm) int8 ~24, int4 ~32.
QUANTIZED_ROW_LIMITS: dict[tuple[str, torch.dtype], int] = {
    ("int8", torch.bfloat16): 8,
    ("int4", torch.bfloat16): 12,
    ("int8", torch.float32): 16,
    ("int4", torch.float32): 32,
}
INT4_GROUP = 32


def kernel_dtype(dtype: torch.dtype) -> torch.dtype:
    """The activation dtype torch's weight-only CPU kernels run fast in.

    They are written for bfloat16 activations; float32 ones take a path
    tens of times slower, so float32 models feed them bfloat16 (and get
    float32 back) on CPUs with native bfloat16 instructions.
    """
    from agentrt.engine.loader import cpu_has_bf16_instructions

    if dtype == torch.float32 and cpu_has_bf16_instructions():
        return torch.bfloat16
    return dtype


def max_quantized_rows(quantization: str, dtype: torch.dtype) -> int:
    """The most rows a ``quantization`` weight of a ``dtype`` model multiplies quantized."""
    if quantization not in ("int8", "int4"):
        raise ValueError(f"no quantized kernel for {quantization!r}")
    key = (quantization, torch.float32 if dtype == torch.float32 else torch.bfloat16)
    return QUANTIZED_ROW_LIMITS[key]


def quantize_int8(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-output-channel symmetric int8: ``weight ~ q * scales[:, None]``; float32 scales."""
    w = weight.detach().float()
    scales = (w.abs().amax(dim=1) / 127).clamp(min=1e-8)
    q = (w / scales.unsqueeze(1)).round().clamp(-127, 127).to(torch.int8)
    return q, scales


def quantize_int4(weight: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Asymmetric int4 in groups of :data:`INT4_GROUP` inputs: ``w ~ q * scale + low``.

    Returns ``q`` (int32 in [0, 15], ``[out, in]``) and the per-group
    ``scale`` and ``low`` (``[out, in / group]``, float32).
    """
    n, k = weight.shape
    if k % INT4_GROUP:
        raise ValueError(f"int4 needs in_features divisible by {INT4_GROUP}, got {k}")
    groups = weight.detach().float().view(n, k // INT4_GROUP, INT4_GROUP)
    low = groups.amin(dim=-1, keepdim=True)
    scale = ((groups.amax(dim=-1, keepdim=True) - low) / 15).clamp(min=1e-8)
    q = ((groups - low) / scale).round().clamp(0, 15).view(n, k).to(torch.int32)
    return q, scale.squeeze(-1), low.squeeze(-1)


class Int8Weight(Weight):
    """int8 weights (:func:`quantize_int8`) multiplied by ``aten._weight_int8pack_mm``.

    Above :func:`max_quantized_rows` rows the dense weight (or its packed copy) is used.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool = False) -> None:
        super().__init__(weight, bias, pack)
        self.max_rows = max_quantized_rows("int8", weight.dtype)
        self.act_dtype = kernel_dtype(weight.dtype)
        self.qweight, scales = quantize_int8(weight)
        self.scales = scales.to(self.act_dtype)

    @property
    def nbytes(self) -> int:
        bias = _size(self.bias) if self.bias is not None else 0
        return _size(self.qweight) + _size(self.scales) + bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_rows:
            return super().__call__(x)
        out: torch.Tensor = torch.ops.aten._weight_int8pack_mm(
            x.to(self.act_dtype), self.qweight, self.scales
        )
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype)


class Int4Weight(Weight):
    """int4 weights (:func:`quantize_int4`) multiplied by ``aten._weight_int4pack_mm_for_cpu``.

    The kernel reads each group's pair as ``(scale, zero)`` and computes
    ``(q - 8) * scale + zero``, so ``zero = low + 8 * scale``. Above
    :func:`max_quantized_rows` rows the dense weight (or its packed copy) is used.
    """

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None, pack: bool = False) -> None:
        super().__init__(weight, bias, pack)
        self.max_rows = max_quantized_rows("int4", weight.dtype)
        self.act_dtype = kernel_dtype(weight.dtype)
        q, scale, low = quantize_int4(weight)
        self.qweight = torch.ops.aten._convert_weight_to_int4pack_for_cpu(q, 1)
        pairs = torch.stack((scale, low + 8 * scale), dim=-1)  # [out, groups, 2]
        self.scales_and_zeros = pairs.transpose(0, 1).contiguous().to(self.act_dtype)

    @property
    def nbytes(self) -> int:
        bias = _size(self.bias) if self.bias is not None else 0
        return _size(self.qweight) + _size(self.scales_and_zeros) + bias

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[0] > self.max_rows:
            return super().__call__(x)
        out: torch.Tensor = torch.ops.aten._weight_int4pack_mm_for_cpu(
            x.to(self.act_dtype), self.qweight, INT4_GROUP, self.scales_and_zeros
        )
        if self.bias is not None:
            out = out + self.bias
        return out.to(x.dtype)


def make_weight(
    weight: torch.Tensor, bias: torch.Tensor | None, quantization: str, pack: bool
) -> Weight:
    """The :class:`Weight` kind for ``quantization`` (``none``, ``int8`` or ``int4``)."""
    if quantization == "none":
        return Weight(weight, bias, pack)
    if weight.device.type != "cpu":
        raise ValueError(f"{quantization} weights run on CPU only, not {weight.device.type}")
    if quantization == "int8":
        return Int8Weight(weight, bias, pack)
    if quantization == "int4":
        return Int4Weight(weight, bias, pack)
    raise ValueError(f"unknown quantization {quantization!r}; use none, int8 or int4")
