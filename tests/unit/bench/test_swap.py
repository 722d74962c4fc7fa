"""The swap benchmark's per-block copies move the same bytes as the engine's batched swap."""

from __future__ import annotations

import torch
from tests.unit.engine.helpers import small_kv_cache

from agentrt.bench.swap import swap_in_per_block, swap_out_per_block
from agentrt.engine.kv_cache import HostSwapPool


def test_per_block_copies_give_the_same_bytes() -> None:
    c = small_kv_cache()
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
    c = small_kv_cache(num_blocks=4)
    pool = HostSwapPool(c, capacity_bytes=2 * c.block_bytes)
    assert swap_out_per_block(pool, [0, 1, 2]) is None
    assert pool.num_free_blocks == 2
