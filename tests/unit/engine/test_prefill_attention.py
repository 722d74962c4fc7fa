"""Prefill attention runs in SDPA's fused CPU kernel, with and without cached context, and
gives transformers' greedy tokens; the math path it falls to on 3-D inputs is ~9x slower for a
2,000-token prompt."""

from __future__ import annotations

import os

import pytest
import torch
from tests.unit.engine.helpers import hf_reference, random_prompts, tiny_engine

from agentrt.protocol.engine import SamplingParams

FUSED = "aten::_scaled_dot_product_flash_attention_for_cpu"
MATH = "aten::_scaled_dot_product_attention_math"


def sdpa_kernels(run: object) -> dict[str, int]:
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as profile:
        run()  # type: ignore[operator]
    return {e.key: e.count for e in profile.key_averages() if e.key in (FUSED, MATH)}


@pytest.mark.skipif(
    os.environ.get("AGENTRT_TEST_DEVICE", "cpu") != "cpu", reason="counts SDPA's CPU kernels"
)
def test_a_chunked_prefill_attends_in_the_fused_kernel_and_matches_transformers() -> None:
    # 48 tokens in chunks of 20: the first chunk has no cached context (causal), the next two
    # attend to the chunks before them through the paged cache (an explicit mask).
    engine = tiny_engine(max_num_batched_tokens=20, max_num_seqs=1, enable_prefix_caching=False)
    prompts = random_prompts([48])
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    outputs: list[list[int]] = []
    kernels = sdpa_kernels(lambda: outputs.extend(engine.generate(prompts, params)))
    layers = engine.runner.shape.num_layers
    assert kernels.get(MATH, 0) == 0
    assert kernels[FUSED] >= 3 * layers  # every prefill chunk of every layer
    assert [o[0] for o in outputs] == hf_reference(prompts, 4)


def test_prefill_attention_takes_the_output_layout_cuda_kernels_return(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # cuDNN's SDPA returns [batch, heads, tokens, d] laid out as [batch, tokens, heads, d]:
    # a view of it cannot split the heads back into key heads and groups.
    real = torch.nn.functional.scaled_dot_product_attention

    def cudnn_layout(*args: object, **kwargs: object) -> torch.Tensor:
        o = real(*args, **kwargs)  # type: ignore[arg-type]
        return o.transpose(1, 2).contiguous().transpose(1, 2)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", cudnn_layout)
    engine = tiny_engine(max_num_batched_tokens=20, max_num_seqs=1, enable_prefix_caching=False)
    prompts = random_prompts([48])
    params = SamplingParams(max_tokens=4, temperature=0.0, ignore_eos=True)
    assert [o[0] for o in engine.generate(prompts, params)] == hf_reference(prompts, 4)
