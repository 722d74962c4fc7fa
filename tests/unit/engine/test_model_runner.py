"""ModelRunner: one flattened, unpadded forward pass over a ragged batch, and the KV pool size."""

from __future__ import annotations

import pytest
import torch
from tests.conftest import make_tiny_llama
from tests.unit.engine.helpers import random_prompts, seq

from agentrt.engine.attention import ATTENTION_NAME
from agentrt.engine.block_manager import BlockManager
from agentrt.engine.config import EngineConfig
from agentrt.engine.kv_cache import PagedKVCache
from agentrt.engine.model_runner import ModelRunner, ModelShape, ScheduledSeq, kv_pool_blocks


def last_logits(model: torch.nn.Module, tokens: list[int]) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=torch.tensor([tokens])).logits[0, -1]


@pytest.mark.parametrize("lean", [True, False], ids=["lean-decoder", "transformers-forward"])
def test_ragged_batch_logits_equal_one_forward_per_sequence(lean: bool) -> None:
    reference = make_tiny_llama()
    reference.set_attn_implementation("sdpa")
    runner = ModelRunner(
        make_tiny_llama(),
        EngineConfig(dtype="float32", num_kv_blocks=64, block_size=4, lean_decoder=lean),
    )
    assert (runner.decoder is not None) == lean
    bm = BlockManager(64, 4, enable_prefix_caching=False)
    a, b, c = (seq(n, p) for n, p in zip("abc", random_prompts([9, 14, 6], seed=41), strict=True))
    # First step: a and b prefill fully, c only its first 4 tokens (a chunk).
    first = [ScheduledSeq(a, 9), ScheduledSeq(b, 14), ScheduledSeq(c, 4)]
    for item in first:
        bm.allocate(item.seq, item.num_tokens)
    logits = runner.execute(first)
    assert logits.shape == (2, 256)  # c's chunk does not complete its prompt: no logits for it
    torch.testing.assert_close(logits[0], last_logits(reference, a.token_ids))
    torch.testing.assert_close(logits[1], last_logits(reference, b.token_ids))
    for item in first:
        item.seq.num_computed_tokens += item.num_tokens
    # Second step: a and b decode one token each (they lead), c finishes its prompt.
    a.token_ids.append(17)
    b.token_ids.append(99)
    second = [ScheduledSeq(a, 1), ScheduledSeq(b, 1), ScheduledSeq(c, 2)]
    for item in second:
        bm.allocate(item.seq, item.seq.num_computed_tokens + item.num_tokens)
    logits = runner.execute(second)
    for row, s in enumerate((a, b, c)):
        torch.testing.assert_close(logits[row], last_logits(reference, s.token_ids))


def test_kv_pool_size_from_bytes_fraction_or_block_count() -> None:
    shape = ModelShape.of(make_tiny_llama().config)
    block_bytes = PagedKVCache.bytes_per_block(
        shape.num_layers, 16, shape.num_kv_heads, shape.head_dim, torch.float32
    )
    cpu = torch.device("cpu")
    assert (
        kv_pool_blocks(
            EngineConfig(kv_cache_memory=10 * block_bytes + 5), shape, torch.float32, cpu
        )
        == 10
    )
    assert kv_pool_blocks(EngineConfig(num_kv_blocks=3), shape, torch.float32, cpu) == 3
    assert kv_pool_blocks(EngineConfig(kv_cache_memory=0.01), shape, torch.float32, cpu) >= 1


def test_the_paged_attention_refuses_to_run_outside_the_engine() -> None:
    model = make_tiny_llama()
    ModelRunner(model, EngineConfig(dtype="float32", num_kv_blocks=4, lean_decoder=False))
    assert model.config._attn_implementation == ATTENTION_NAME
    with pytest.raises(RuntimeError, match="inside agentrt's engine"):
        model(input_ids=torch.tensor([[1, 2, 3]]))


def test_num_threads_sets_torchs_cpu_threads() -> None:
    before = torch.get_num_threads()
    try:
        ModelRunner(
            make_tiny_llama(), EngineConfig(dtype="float32", num_kv_blocks=4, num_threads=1)
        )
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
