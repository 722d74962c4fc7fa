"""The paged KV tensors and the host swap pool."""

from __future__ import annotations

import torch
from tests.unit.engine.helpers import small_kv_cache

from agentrt.engine.kv_cache import HostRange, HostSwapPool


def test_a_layer_view_is_the_cache_itself() -> None:
    c = small_kv_cache()
    keys, values = c.layer(1)
    keys[5].fill_(7.0)  # slot 5 = block 1, offset 1
    assert torch.all(c.kv[1, 0, 1, 1] == 7.0)
    assert keys.shape == (8 * 4, 2, 8) and values.data_ptr() == c.kv[1, 1].data_ptr()


def test_swap_out_and_in_restores_every_layer_into_other_blocks() -> None:
    c = small_kv_cache()
    pool = HostSwapPool(c, capacity_bytes=4 * c.block_bytes)
    before = c.kv[:, :, [2, 5, 6]].clone()
    handle = pool.swap_out([2, 5, 6])
    assert handle == HostRange(0, 3) and pool.num_free_blocks == 1
    c.kv.zero_()
    pool.swap_in(handle, [0, 1, 7])
    assert torch.equal(c.kv[:, :, [0, 1, 7]], before)
    assert pool.num_free_blocks == 4


def test_a_full_pool_refuses_and_released_ranges_merge() -> None:
    c = small_kv_cache()
    pool = HostSwapPool(c, capacity_bytes=5 * c.block_bytes)
    a, b, d = pool.swap_out([0, 1]), pool.swap_out([2]), pool.swap_out([3, 4])
    assert a and b and d
    assert pool.swap_out([5]) is None and not pool.can_hold(1)
    pool.release(a)
    pool.release(d)
    assert not pool.can_hold(3)  # 2 + 2 free, but not contiguous
    pool.release(b)
    assert pool.can_hold(5) and pool.num_free_blocks == 5


def test_no_swap_space_means_no_swap() -> None:
    c = small_kv_cache()
    pool = HostSwapPool(c, capacity_bytes=0)
    assert pool.num_blocks == 0 and pool.swap_out([0]) is None
