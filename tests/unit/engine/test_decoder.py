"""The lean decoder computes what transformers' forward computes, for the models it accepts."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from tests.conftest import make_tiny_llama
from tests.unit.engine.helpers import random_prompts, seq

from agentrt.engine.block_manager import BlockManager
from agentrt.engine.config import EngineConfig
from agentrt.engine.decoder import LeanDecoder, unsupported_reason
from agentrt.engine.model_runner import ModelRunner, ScheduledSeq

SMALL = {
    "vocab_size": 256,
    "hidden_size": 64,
    "intermediate_size": 96,
    "num_hidden_layers": 2,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "max_position_embeddings": 256,
}


def qwen2() -> Any:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(3)
    model = Qwen2ForCausalLM(Qwen2Config(**SMALL)).eval()
    assert model.model.layers[0].self_attn.q_proj.bias is not None  # Qwen2 projects with biases
    with torch.no_grad():
        for layer in model.model.layers:
            layer.self_attn.k_proj.bias.normal_()
    return model


def llama3_scaled_rope() -> Any:
    from transformers import LlamaConfig, LlamaForCausalLM

    rope = {
        "rope_type": "llama3",
        "rope_theta": 10000.0,
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 32,
    }
    torch.manual_seed(4)
    return LlamaForCausalLM(LlamaConfig(**SMALL, rope_parameters=rope)).eval()


def reference_logits(model: Any, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0, -1].float()


@pytest.mark.parametrize("make", [qwen2, llama3_scaled_rope], ids=["qwen2-biases", "llama3-rope"])
def test_prefill_and_decode_logits_equal_transformers(make: Any) -> None:
    reference = make()
    reference.set_attn_implementation("sdpa")
    runner = ModelRunner(make(), EngineConfig(dtype="float32", num_kv_blocks=64, block_size=4))
    assert runner.decoder is not None
    bm = BlockManager(64, 4, enable_prefix_caching=False)
    a, b = (seq(n, p) for n, p in zip("ab", random_prompts([40, 7], seed=5), strict=True))
    items = [ScheduledSeq(a, 40), ScheduledSeq(b, 7)]
    for step in range(3):  # one prefill, then two decode steps
        for item in items:
            bm.allocate(item.seq, item.seq.num_computed_tokens + item.num_tokens)
        logits = runner.execute(items)
        for row, item in enumerate(items):
            expected = reference_logits(reference, item.seq.token_ids)
            torch.testing.assert_close(logits[row], expected, rtol=1e-4, atol=1e-4)
            item.seq.num_computed_tokens += item.num_tokens
            item.seq.token_ids.append(int(logits[row].argmax()) if step else 11 + row)
        items = [ScheduledSeq(a, 1), ScheduledSeq(b, 1)]


def test_fused_projections_share_the_models_memory() -> None:
    model = make_tiny_llama()
    before = {name: p.clone() for name, p in model.named_parameters()}
    decoder = LeanDecoder(model, max_positions=64, pack=False)
    attn = model.model.layers[0].self_attn
    fused = decoder.layers[0].qkv.weight
    assert attn.q_proj.weight.data_ptr() == fused.data_ptr()
    assert attn.k_proj.weight.data_ptr() == fused[attn.q_proj.weight.shape[0] :].data_ptr()
    for name, p in model.named_parameters():  # same values, the model still runs as before
        assert torch.equal(p, before[name]), name


def test_bfloat16_logits_stay_close_to_transformers_in_bfloat16() -> None:
    reference = make_tiny_llama().to(torch.bfloat16)
    reference.set_attn_implementation("sdpa")
    runner = ModelRunner(
        make_tiny_llama(), EngineConfig(dtype="bfloat16", num_kv_blocks=16, block_size=4)
    )
    [tokens] = random_prompts([20], seed=6)
    s = seq("a", tokens)
    BlockManager(16, 4, enable_prefix_caching=False).allocate(s, 20)
    logits = runner.execute([ScheduledSeq(s, 20)])[0]
    expected = reference_logits(reference, tokens)
    assert int(logits.argmax()) == int(expected.argmax())
    torch.testing.assert_close(logits, expected, rtol=0.05, atol=0.15)


def test_other_architectures_keep_the_transformers_forward() -> None:
    from transformers import Qwen3Config, Qwen3ForCausalLM

    model = Qwen3ForCausalLM(Qwen3Config(**SMALL, head_dim=16)).eval()
    assert unsupported_reason(model) is not None  # its attention normalises q and k
    runner = ModelRunner(model, EngineConfig(dtype="float32", num_kv_blocks=16, block_size=4))
    assert runner.decoder is None
    with pytest.raises(ValueError, match="cannot run this model"):
        LeanDecoder(model, max_positions=64, pack=False)
