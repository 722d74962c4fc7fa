"""The swap benchmark's per-block copies move the same bytes as the engine's batched swap."""

from __future__ import annotations

import torch

from agentrt.bench.swap import swap_in_per_block, swap_out_per_block
from agentrt.engine.kv_cache import HostSwapPool, PagedKVCache


def test_per_block_copies_give_the_same_bytes() -> None:
    c = PagedKVCache(
        num_layers=3,
        num_blocks=8,
        block_size=4,
        num_kv_heads=2,
        head_dim=8,
        dtype=torch.float32,
        device="cpu",
    )
    c.kv.copy_(torch.randn_like(c.kv))
    pool = HostSwapPool(c, capacity_bytes=8 * c.block_bytes)
    batched = pool.swap_out([3, 1, 4])
    per_block = swap_out_per_block(pool, [3, 1, 4])
    assert batched is not None and per_block is not None
    assert torch.equal(pool.view(batched), pool.view(per_block))
    expected = c.kv[:, :, [3, 1, 4]].clone()
    c.kv.zero_()
    swap_in_per_block(pool, per_block, [0, 2, 5])
    assert torch.equal(c.kv[:, :, [0, 2, 5]], expected)
    assert pool.num_free_blocks == 5


def test_per_block_swap_out_refuses_when_no_range_fits() -> None:
    c = PagedKVCache(
        num_layers=1,
        num_blocks=4,
        block_size=2,
        num_kv_heads=1,
        head_dim=2,
        dtype=torch.float32,
        device="cpu",
    )
    pool = HostSwapPool(c, capacity_bytes=2 * c.block_bytes)
    assert swap_out_per_block(pool, [0, 1, 2]) is None
    assert pool.num_free_blocks == 2
