"""BlockManager: reference counts, the chained-hash prefix cache, and LRU reuse of cached blocks."""

from __future__ import annotations

import pytest

from agentrt.engine.block_manager import BlockManager, OutOfBlocks
from agentrt.engine.sampling import SamplingState
from agentrt.engine.sequence import Sequence
from agentrt.protocol.engine import SamplingParams
from agentrt.scheduling.call import Call


def seq(tokens: list[int], name: str = "s") -> Sequence:
    return Sequence(
        seq_id=name,
        request_id=name,
        index=0,
        token_ids=list(tokens),
        num_prompt_tokens=len(tokens),
        state=SamplingState(SamplingParams()),
        max_tokens=8,
        arrival=0.0,
        call=Call(name, name),
    )


def run_prefill(bm: BlockManager, s: Sequence) -> None:
    """What the engine does for a new sequence: reuse the cached prefix, allocate, compute."""
    bm.acquire_prefix(s, bm.lookup_prefix(s))
    bm.allocate(s, s.num_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.register_computed_blocks(s)


def test_allocate_and_free_return_every_block() -> None:
    bm = BlockManager(num_blocks=8, block_size=4, enable_prefix_caching=False)
    s = seq(list(range(10)))
    bm.allocate(s, 10)
    assert len(s.block_table) == 3 and bm.num_free_blocks == 5
    bm.allocate(s, 13)  # grows by one block
    assert len(s.block_table) == 4
    bm.free(s)
    assert bm.num_free_blocks == 8 and s.block_table == []


def test_allocation_beyond_the_pool_raises_and_takes_nothing() -> None:
    bm = BlockManager(num_blocks=2, block_size=4, enable_prefix_caching=False)
    s = seq(list(range(12)))
    with pytest.raises(OutOfBlocks):
        bm.allocate(s, 12)
    assert bm.num_free_blocks == 2 and s.block_table == []


def test_shared_prefix_shares_full_blocks_with_reference_counts() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    a = seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a")
    run_prefill(bm, a)
    b = seq([1, 2, 3, 4, 5, 6, 7, 8, 42, 43], "b")
    hits = bm.lookup_prefix(b)
    assert hits == a.block_table[:2]
    run_prefill(bm, b)
    assert b.num_cached_tokens == 8 and b.block_table[:2] == a.block_table[:2]
    assert [bm.ref_counts[x] for x in a.block_table[:2]] == [2, 2]
    bm.free(a)
    assert [bm.ref_counts[x] for x in b.block_table[:2]] == [1, 1]
    assert bm.prefix_hit_tokens == 8 and bm.prefix_queried_tokens == 19


def test_a_prefix_that_differs_early_breaks_the_chain() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    run_prefill(bm, seq([1, 2, 3, 4, 5, 6, 7, 8, 9], "a"))
    # Same second block, different first block: the chained hash of block 2 differs too.
    assert bm.lookup_prefix(seq([0, 2, 3, 4, 5, 6, 7, 8, 9], "b")) == []


def test_a_fully_cached_prompt_still_leaves_one_token_to_compute() -> None:
    bm = BlockManager(num_blocks=16, block_size=4, enable_prefix_caching=True)
    run_prefill(bm, seq(list(range(8)), "a"))
    assert len(bm.lookup_prefix(seq(list(range(8)), "b"))) == 1  # blocks 0 only: token 7 must run


def test_freed_cached_blocks_stay_reusable_until_evicted_least_recent_first() -> None:
    bm = BlockManager(num_blocks=4, block_size=2, enable_prefix_caching=True)
    old, new = seq([1, 2, 3], "old"), seq([7, 8, 9], "new")
    run_prefill(bm, old)
    run_prefill(bm, new)
    bm.free(old)
    bm.free(new)
    assert bm.num_free_blocks == 4
    # Two never-hashed blocks are free; the cached ones survive the next allocation of two.
    filler = seq([50, 51, 52, 53], "filler")
    bm.allocate(filler, 4)
    assert bm.lookup_prefix(seq([1, 2, 3], "again")) and bm.lookup_prefix(seq([7, 8, 9], "again"))
    # One more block must evict a cached one: the least recently freed ("old").
    more = seq([60, 61], "more")
    bm.allocate(more, 2)
    assert bm.lookup_prefix(seq([1, 2, 3], "again")) == []
    assert bm.lookup_prefix(seq([7, 8, 9], "again")) != []


def test_a_hash_collision_is_a_miss_not_wrong_output() -> None:
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=True)
    a = seq([1, 2, 3], "a")
    run_prefill(bm, a)
    bm.block_tokens[a.block_table[0]] = (9, 9)  # what a colliding hash would look like
    assert bm.lookup_prefix(seq([1, 2, 3], "b")) == []


def test_prefix_caching_off_never_hits() -> None:
    bm = BlockManager(num_blocks=8, block_size=2, enable_prefix_caching=False)
    run_prefill(bm, seq([1, 2, 3, 4, 5], "a"))
    assert bm.lookup_prefix(seq([1, 2, 3, 4, 5], "b")) == []
