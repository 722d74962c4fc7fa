"""The swap benchmark: the engine's batched swap against one copy per block.

The per-block copies are vLLM's old way and exist only here, to show what
batching saves; the engine swaps with :class:`~agentrt.engine.kv_cache.HostSwapPool`.
"""

from __future__ import annotations

import statistics
import time
from typing import TYPE_CHECKING, Any

import msgspec

if TYPE_CHECKING:
    from agentrt.engine.kv_cache import HostRange, HostSwapPool


class Swap(msgspec.Struct, kw_only=True):
    tokens: int
    blocks: int
    bytes: int
    pinned: bool
    batched_seconds: float  # one swap-out + swap-in, median of repeats
    per_block_seconds: float
    speedup: float


def swap_out_per_block(pool: HostSwapPool, block_ids: list[int]) -> HostRange | None:
    """Copy the blocks to a host range one block at a time; ``None`` when no range is large enough."""
    handle = pool.reserve(len(block_ids))
    if handle is None:
        return None
    dst, rows = pool.view(handle), pool.cache.rows
    for i, block in enumerate(block_ids):
        dst[:, i].copy_(rows[:, block], non_blocking=pool.pinned)
    _wait_for_copies(pool)
    return handle


def swap_in_per_block(pool: HostSwapPool, handle: HostRange, block_ids: list[int]) -> None:
    """Copy a host range back into ``block_ids`` one block at a time and free the range."""
    src, rows = pool.view(handle), pool.cache.rows
    for i, block in enumerate(block_ids):
        rows[:, block].copy_(src[:, i], non_blocking=pool.pinned)
    _wait_for_copies(pool)
    pool.release(handle)


def _wait_for_copies(pool: HostSwapPool) -> None:
    if pool.pinned:
        import torch

        torch.cuda.current_stream(pool.cache.device).synchronize()


def run_swap(engine: Any, tokens: int, repeats: int = 5) -> Swap:
    """One swap-out + swap-in of a ``tokens`` context: batched against one copy per block."""
    import torch

    from agentrt.engine.block_manager import cdiv
    from agentrt.engine.kv_cache import HostSwapPool

    cache = engine.runner.kv_cache
    blocks = cdiv(tokens, cache.block_size)
    if blocks > cache.num_blocks:
        raise RuntimeError(f"the KV pool has {cache.num_blocks} blocks, {blocks} needed")
    pool = HostSwapPool(cache, 2 * blocks * cache.block_bytes)
    # Every other block, reversed: a victim's blocks are rarely contiguous.
    ids = list(range(cache.num_blocks - 1, -1, -1))[: 2 * blocks : 2][:blocks]
    if len(ids) < blocks:
        ids = list(range(blocks))
    index = torch.tensor(ids, device=cache.device)
    shape = (*cache.kv.shape[:2], blocks, *cache.kv.shape[3:])
    cache.kv[:, :, index] = torch.randn(shape, device=cache.device).to(cache.dtype)
    expected = cache.kv[:, :, index].clone()

    def batched() -> None:
        handle = pool.swap_out(ids)
        assert handle is not None
        pool.swap_in(handle, ids)

    def per_block() -> None:
        handle = swap_out_per_block(pool, ids)
        assert handle is not None
        swap_in_per_block(pool, handle, ids)

    timings = {}
    for name, fn in (("batched", batched), ("per_block", per_block)):
        fn()  # touch the host pages once
        runs = []
        for _ in range(repeats):
            started = time.perf_counter()
            fn()
            runs.append(time.perf_counter() - started)
        timings[name] = statistics.median(runs)
    if not torch.equal(cache.kv[:, :, index], expected):
        raise RuntimeError("swap round trip changed the KV contents")
    cache.kv.zero_()
    return Swap(
        tokens=tokens,
        blocks=blocks,
        bytes=blocks * cache.block_bytes,
        pinned=pool.pinned,
        batched_seconds=timings["batched"],
        per_block_seconds=timings["per_block"],
        speedup=timings["per_block"] / timings["batched"],
    )
