"""The engine uses xformers only where one call in the model's shape and dtype runs.

A wheel built for another torch imports but has no kernels (seen on an H200
with xformers 0.0.35 under torch 2.11), and the kernels refuse float32 and
heads under 32 wide: each must fall back to SDPA instead of failing requests.
"""

from __future__ import annotations

import sys
import types
from typing import Any

import pytest
import torch

from agentrt.engine.attention import xformers_unusable


def fake_xformers(monkeypatch: pytest.MonkeyPatch, attention: Any) -> list[tuple[Any, ...]]:
    calls: list[tuple[Any, ...]] = []

    def memory_efficient_attention(q: Any, k: Any, v: Any, attn_bias: Any = None) -> Any:
        calls.append((q.shape, k.shape, q.dtype, attn_bias))
        return attention(q)

    class Mask:
        @staticmethod
        def from_seqlens(q_seqlen: list[int], kv_seqlen: list[int]) -> tuple[str, Any, Any]:
            return ("mask", q_seqlen, kv_seqlen)

    ops = types.ModuleType("xformers.ops")
    ops.memory_efficient_attention = memory_efficient_attention  # type: ignore[attr-defined]
    bias = types.ModuleType("xformers.ops.fmha.attn_bias")
    bias.BlockDiagonalCausalFromBottomRightMask = Mask  # type: ignore[attr-defined]
    for name, module in {
        "xformers": types.ModuleType("xformers"),
        "xformers.ops": ops,
        "xformers.ops.fmha": types.ModuleType("xformers.ops.fmha"),
        "xformers.ops.fmha.attn_bias": bias,
    }.items():
        monkeypatch.setitem(sys.modules, name, module)
    return calls


def test_usable_when_one_call_in_the_models_shape_runs(monkeypatch: pytest.MonkeyPatch) -> None:
    calls = fake_xformers(monkeypatch, lambda q: q)
    cpu = torch.device("cpu")
    assert xformers_unusable(cpu, torch.bfloat16, num_heads=9, num_kv_heads=3, head_dim=64) is None
    # Grouped layout [batch, tokens, kv_heads, group, d], keys shared across each group.
    assert calls == [((1, 2, 3, 3, 64), (1, 2, 3, 3, 64), torch.bfloat16, ("mask", [2], [2]))]


def test_unusable_when_no_kernel_takes_the_call(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(q: Any) -> Any:
        raise NotImplementedError(
            "No operator found for `memory_efficient_attention_forward`:\n"
            "    xFormers wasn't build with CUDA support"
        )

    fake_xformers(monkeypatch, refuse)
    why = xformers_unusable(torch.device("cpu"), torch.float32, 4, 2, 16)
    assert why is not None and "No operator found" in why and "\n" not in why


def test_unusable_when_not_installed(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "xformers", None)  # an import of it raises ImportError
    monkeypatch.setitem(sys.modules, "xformers.ops", None)
    assert xformers_unusable(torch.device("cpu"), torch.float32, 4, 2, 16) == (
        "xformers is not installed"
    )
