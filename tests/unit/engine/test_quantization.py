"""Weight-only int8/int4 decode: torch's kernels compute the product of the quantized weights."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from tests.conftest import make_tiny_llama, make_tiny_loaded
from tests.unit.engine.helpers import assert_block_pool_clean, random_prompts, tiny_engine

from agentrt.config import ConfigError
from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.matmul import (
    INT4_GROUP,
    Int4Weight,
    Int8Weight,
    make_weight,
    max_quantized_rows,
    quantize_int4,
    quantize_int8,
)
from agentrt.engine.scoring import perplexity, token_logits
from agentrt.protocol.engine import SamplingParams


def weight(out: int = 96, inp: int = 128, seed: int = 0) -> torch.Tensor:
    return torch.randn(out, inp, generator=torch.Generator().manual_seed(seed))


def test_int8_rounds_each_weight_to_its_channels_grid() -> None:
    w = weight()
    q, scales = quantize_int8(w)
    assert q.dtype == torch.int8 and int(q.abs().max()) == 127  # the largest weight spans the range
    error = (q.float() * scales.unsqueeze(1) - w).abs()
    assert bool((error <= scales.unsqueeze(1) / 2 + 1e-6).all())


def test_int4_rounds_each_weight_to_its_groups_grid() -> None:
    w = weight()
    q, scale, low = quantize_int4(w)
    assert int(q.min()) == 0 and int(q.max()) == 15
    assert scale.shape == low.shape == (96, 128 // INT4_GROUP)
    grid = q.float().view(96, -1, INT4_GROUP) * scale.unsqueeze(-1) + low.unsqueeze(-1)
    error = (grid.view_as(w) - w).abs().view(96, -1, INT4_GROUP)
    assert bool((error <= scale.unsqueeze(-1) / 2 + 1e-6).all())
    with pytest.raises(ValueError, match="divisible"):
        quantize_int4(weight(8, 40))


def dequantized_int8(w: torch.Tensor) -> torch.Tensor:
    q, scales = quantize_int8(w)
    return q.float() * scales.unsqueeze(1)


def dequantized_int4(w: torch.Tensor) -> torch.Tensor:
    q, scale, low = quantize_int4(w)
    grid = q.float().view(w.shape[0], -1, INT4_GROUP) * scale.unsqueeze(-1) + low.unsqueeze(-1)
    return grid.view_as(w)


@pytest.mark.parametrize(
    ("kind", "dequantize"), [(Int8Weight, dequantized_int8), (Int4Weight, dequantized_int4)]
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_quantized_products_equal_the_dequantized_weights(
    kind: type, dequantize: object, dtype: torch.dtype
) -> None:
    w, bias = weight(), torch.randn(96)
    layer = kind(w.to(dtype), bias.to(dtype))
    # The scales' dtype follows the host (bfloat16 with native support, else float32).
    packed_bytes = layer.qweight.numel() * layer.qweight.element_size()
    assert packed_bytes == w.numel() * (1 if kind is Int8Weight else 0.5)
    assert layer.nbytes < w.numel() * 4  # fewer bytes than the float32 weight
    rows = layer.max_rows
    x = torch.randn(rows, 128).to(dtype)
    got = layer(x)
    assert got.dtype == dtype and got.shape == (rows, 96)
    expected = x.float() @ dequantize(w.to(dtype)).t() + bias.to(dtype).float()  # type: ignore[operator]
    # bfloat16 activations and scales: about 3 significant digits.
    torch.testing.assert_close(got.float(), expected, rtol=0.02, atol=0.05 * expected.abs().mean())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_above_the_kinds_limit_use_the_dense_weight(dtype: torch.dtype) -> None:
    w, bias = weight().to(dtype), torch.randn(96).to(dtype)
    for kind in ("int8", "int4"):
        layer = make_weight(w, bias, kind, pack=False)
        limit = max_quantized_rows(kind, dtype)
        assert layer.max_rows == limit  # type: ignore[attr-defined]
        above = torch.randn(limit + 1, 128).to(dtype)
        torch.testing.assert_close(layer(above), F.linear(above, w, bias))
        at = torch.randn(limit, 128).to(dtype)
        assert not torch.equal(layer(at), F.linear(at, w, bias))  # the quantized kernel ran
    # int4 reads fewer bytes per row than int8 and stays ahead for more rows.
    assert max_quantized_rows("int4", dtype) > max_quantized_rows("int8", dtype)
    with pytest.raises(ValueError, match="unknown quantization"):
        make_weight(w, bias, "int3", pack=False)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_rows_above_the_limit_use_the_packed_dense_copy_when_packing(
    monkeypatch: pytest.MonkeyPatch, dtype: torch.dtype
) -> None:
    from agentrt.engine import loader
    from agentrt.engine.linear import packing_available

    if not packing_available():
        pytest.skip("torch built without oneDNN")
    monkeypatch.setattr(loader, "cpu_has_bf16_instructions", lambda: True)
    w, bias = weight().to(dtype), torch.randn(96).to(dtype)
    for kind in ("int8", "int4"):
        try:
            layer = make_weight(w, bias, kind, pack=True)
        except RuntimeError as e:  # oneDNN's bfloat16 reorder needs avx512bw/vl/dq
            pytest.skip(f"this CPU cannot pack {dtype} weights: {e}")
        assert layer.packed is not None
        # A packed copy of another weight shows which of the two the wide product used.
        other = torch.randn_like(w)
        layer.packed = torch.ops.mkldnn._reorder_linear_weight(other, 32)
        above = torch.randn(max_quantized_rows(kind, dtype) + 1, 128).to(dtype)
        expected = F.linear(above.float(), other.float(), bias.float())
        torch.testing.assert_close(layer(above).float(), expected, rtol=0.02, atol=0.1)


def test_quantization_needs_the_lean_decoder() -> None:
    with pytest.raises(ConfigError, match="lean_decoder"):
        EngineConfig(quantization="int4", lean_decoder=False)
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(
        Qwen3Config(
            vocab_size=64,
            hidden_size=64,
            intermediate_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
        )
    )
    from agentrt.engine.model_runner import ModelRunner

    with pytest.raises(ConfigError, match="not available"):
        ModelRunner(model, EngineConfig(dtype="float32", num_kv_blocks=4, quantization="int8"))


@pytest.mark.parametrize("quantization", ["int8", "int4"])
def test_quantized_engine_stays_close_to_float32(quantization: str) -> None:
    reference = tiny_engine()
    engine = tiny_engine(quantization=quantization)
    decoder = engine.runner.decoder
    assert decoder is not None
    assert decoder.weight_bytes < reference.runner.decoder.weight_bytes / 3  # type: ignore[union-attr]
    [text] = random_prompts([150], seed=9)
    want, got = token_logits(reference, text), token_logits(engine, text)
    assert got.shape == want.shape == (150, 256)
    agreement = (got.argmax(-1) == want.argmax(-1)).float().mean().item()
    floor = 0.95 if quantization == "int8" else 0.8
    assert agreement >= floor
    assert abs(perplexity(got, text) / perplexity(want, text) - 1) < 0.05
    # Generation runs on the quantized weights and frees every block.
    outputs = engine.generate(random_prompts([5, 70], seed=10), SamplingParams(max_tokens=6))
    assert [len(o[0]) for o in outputs] == [6, 6]
    assert_block_pool_clean(engine)


def test_scoring_matches_the_models_own_forward() -> None:
    engine = LLMEngine(
        EngineConfig(dtype="float32", num_kv_blocks=32, block_size=4), make_tiny_loaded()
    )
    [text] = random_prompts([40], seed=11)
    reference = make_tiny_llama()
    with torch.no_grad():
        expected = reference(input_ids=torch.tensor([text])).logits[0]
    torch.testing.assert_close(token_logits(engine, text, chunk=16), expected)
    assert_block_pool_clean(engine)
    with pytest.raises(ValueError, match="nothing"):
        token_logits(engine, [])


@pytest.mark.parametrize(("native_bf16", "warned"), [(True, False), (False, True)])
def test_float32_activations_are_warned_about(
    monkeypatch: pytest.MonkeyPatch, native_bf16: bool, warned: bool
) -> None:
    from structlog.testing import capture_logs

    from agentrt.engine import loader, model_runner
    from agentrt.log import get_logger

    monkeypatch.setattr(loader, "cpu_has_bf16_instructions", lambda: native_bf16)
    with capture_logs() as logs:
        # A logger bound before another test reconfigured logging would bypass the capture.
        monkeypatch.setattr(model_runner, "log", get_logger(model_runner.__name__))
        engine = tiny_engine(quantization="int8")
    assert any(e["event"] == "quantized_float32_activations" for e in logs) == warned
    act = engine.runner.decoder.layers[0].qkv.act_dtype  # type: ignore[union-attr]
    assert act == (torch.bfloat16 if native_bf16 else torch.float32)
