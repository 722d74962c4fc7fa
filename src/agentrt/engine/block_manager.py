"""KV blocks: allocation, reference counts, and the prefix cache.

A block holds ``block_size`` consecutive tokens of one or more sequences
(shared prefixes share blocks). A full block is identified by a chained hash
of its tokens and every token before it, so two sequences with the same
first ``k * block_size`` tokens reuse the same ``k`` blocks: the turns of one
agent program reuse their history. A block whose last user leaves keeps its
contents and hash and becomes *evictable*; it is reused only when no
never-used block is left, so a later turn can still hit it. Which evictable
block goes first is the :class:`~agentrt.scheduling.RetentionPolicy`'s choice,
the object the simulator's cache uses too: least recently freed first with
retention off; with it on, a finished call's blocks stay pinned to its
program for a predicted time-to-live and go last, by expected reuse.
"""

from __future__ import annotations

import time
from collections import OrderedDict, deque
from collections.abc import Callable
from collections.abc import Sequence as SequenceABC
from typing import TYPE_CHECKING, cast

from agentrt.engine.kv_cache import HostRange
from agentrt.engine.sequence import Sequence
from agentrt.scheduling import Pressure, RetentionConfig, RetentionPolicy

if TYPE_CHECKING:
    from agentrt.engine.kv_cache import HostSwapPool

# A block of a host copy: its offset in the copy's range, and its tokens.
HostBlock = tuple[int, tuple[int, ...]]


def cdiv(a: int, b: int) -> int:
    return -(-a // b)


# Programs whose last context the manager remembers, to count recomputed prompt tokens.
MAX_TRACKED_PROGRAMS = 4096


class OutOfBlocks(RuntimeError):
    """The pool cannot give a block; admission control is meant to prevent this."""


class BlockManager:
    def __init__(
        self,
        num_blocks: int,
        block_size: int,
        enable_prefix_caching: bool,
        retention: RetentionPolicy | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.num_blocks = num_blocks
        self.block_size = block_size
        self.enable_prefix_caching = enable_prefix_caching
        self.ref_counts = [0] * num_blocks
        self.block_hash: list[int | None] = [None] * num_blocks
        self.block_tokens: list[tuple[int, ...] | None] = [None] * num_blocks
        self.hash_to_block: dict[int, int] = {}
        self.free_ids: deque[int] = deque(range(num_blocks))
        if retention is None:  # (a policy with nothing evictable is falsy: test for None)
            retention = RetentionPolicy(RetentionConfig(mode="off"), num_blocks)
        # Blocks with ref 0 that are still cached, and the order they are reused in.
        self.evictable = retention
        self.clock = clock
        self.prefix_queried_tokens = 0
        self.prefix_hit_tokens = 0
        # Program -> hashes of the full blocks its last completed call computed, to count
        # the prompt tokens a next call computes again (bounded: least recent go first).
        self._previous: OrderedDict[str, list[int]] = OrderedDict()
        self.recomputed_prompt_tokens = 0
        # Host copies of lost contexts (see attach_host): program -> its range, and each
        # block's hash -> (offset in the range, tokens); oldest copy first.
        self.host: HostSwapPool | None = None
        self._offloaded: OrderedDict[str, tuple[HostRange, dict[int, HostBlock]]] = OrderedDict()
        self.offloads = self.restores = 0

    # --- lost contexts in the host pool -----------------------------------
    def attach_host(self, host: HostSwapPool) -> None:
        """Copy lost contexts (see :mod:`agentrt.scheduling.retention`: pins that yield, expire
        or are displaced, and live programs' unpinned contexts about to be evicted) to
        ``host`` when it has room. The program's next call takes them back when it is
        admitted (:meth:`host_prefix`, :meth:`restore_prefix`) instead of recomputing them;
        when its call arrives or its tool ends, they are prefetched into free blocks.

        Preempted calls come first: an offload only takes host blocks while at least half of
        the pool stays free for their swaps, and offloaded copies are dropped when a swap
        needs the room (:meth:`make_host_room`)."""
        self.host = host
        if self.enable_prefix_caching and self.evictable.enabled and host.num_blocks:
            self.evictable.on_lost = self._offload

    def _offload(self, program_id: str, units: list[object]) -> None:
        host = self.host
        assert host is not None
        hashes, tokens = self.block_hash, self.block_tokens
        # Released last block first: reversed, the copy is in prompt order (one run to copy back).
        blocks = [b for b in reversed(cast("list[int]", units)) if hashes[b] is not None]
        copy = self._offloaded.get(program_id)
        if not blocks or (copy is not None and all(hashes[b] in copy[1] for b in blocks)):
            return
        if host.num_free_blocks - len(blocks) < host.num_blocks // 2:
            return
        handle = host.swap_out(blocks)
        if handle is None:
            return
        self._drop_offloaded(program_id)
        self._offloaded[program_id] = (
            handle,
            {cast(int, hashes[b]): (i, cast("tuple[int, ...]", tokens[b])) for i, b in enumerate(blocks)},
        )
        self.offloads += 1

    def call_arrived(self, program_id: str, now: float) -> None:
        """A call of ``program_id`` arrived: tell the retention policy, and prefetch the
        program's host copy into free blocks."""
        self.evictable.call_arrived(program_id, now)
        self._prefetch(program_id)

    def tool_started(self, program_id: str, tool: str | None) -> None:
        """The client says the program entered a tool: the policy holds its pin meanwhile."""
        self.evictable.tool_started(program_id, self.clock(), tool)

    def tool_ended(self, program_id: str) -> None:
        """The client says the program's tool ended: its call follows, so its host copy (if its
        context was lost meanwhile) is prefetched now rather than when the call arrives."""
        self.evictable.tool_ended(program_id, self.clock())
        if not self.evictable.in_tool(program_id):
            self._prefetch(program_id)

    def _prefetch(self, program_id: str) -> None:
        """Copy the blocks of the program's host copy that are not cached into free blocks
        (evicting nothing), as ordinary cache of the program. The copy stays until the
        program's call is admitted, so losing them again before that costs no copy."""
        found = self._offloaded.get(program_id)
        if found is None:
            return
        handle, index = found
        missing = [(h, at, t) for h, (at, t) in index.items() if h not in self.hash_to_block]
        if not missing or len(missing) > len(self.free_ids):
            return
        fresh = [self.free_ids.popleft() for _ in missing]
        self._copy_in(handle, [at for _, at, _ in missing], fresh)
        for block, (h, _, tokens) in zip(fresh, missing, strict=True):
            self.hash_to_block[h] = block
            self.block_hash[block] = h
            self.block_tokens[block] = tokens
            self.evictable.release(block, program_id)
        self.restores += 1

    def host_prefix(self, seq: Sequence, start: int) -> list[int]:
        """The offsets in its program's host copy of ``seq``'s prompt blocks from block
        ``start`` on, up to the first one the copy lacks: what its admission can copy back
        instead of computing (at least one token is left to compute)."""
        found = self._offloaded.get(seq.call.program_id)
        if found is None:
            return []
        index = found[1]
        bs = self.block_size
        limit = (seq.num_tokens - 1) // bs
        self._extend_hashes(seq, limit)
        offsets: list[int] = []
        for i in range(start, limit):
            entry = index.get(seq.block_hashes[i])
            if entry is None or entry[1] != tuple(seq.token_ids[i * bs : (i + 1) * bs]):
                break
            offsets.append(entry[0])
        return offsets

    def restore_prefix(self, seq: Sequence, offsets: list[int]) -> None:
        """Copy the host blocks at ``offsets`` (from :meth:`host_prefix`, after
        :meth:`acquire_prefix` gave ``seq`` its cached blocks) into new blocks of ``seq``,
        which then count as computed and cached. The host copy is used up. If it was dropped
        since (a swap needed the room), those tokens are computed instead."""
        found = self._offloaded.pop(seq.call.program_id, None)
        host = self.host
        if found is None or host is None:
            self._restore_missed(seq, len(offsets))
            return
        handle, _ = found
        fresh = [self._take_free_block() for _ in offsets]
        self._copy_in(handle, offsets, fresh)
        host.release(handle)
        bs = self.block_size
        for block in fresh:
            i = len(seq.block_table)
            seq.block_table.append(block)
            h = seq.block_hashes[i]
            if h not in self.hash_to_block:
                self.hash_to_block[h] = block
                self.block_hash[block] = h
                self.block_tokens[block] = tuple(seq.token_ids[i * bs : (i + 1) * bs])
        seq.num_computed_tokens += len(fresh) * bs
        seq.num_registered_blocks = len(seq.block_table)
        self.restores += 1

    def _restore_missed(self, seq: Sequence, blocks: int) -> None:
        tokens = blocks * self.block_size
        self.prefix_hit_tokens -= tokens
        seq.num_cached_tokens -= tokens
        self.recomputed_prompt_tokens += tokens

    def _copy_in(self, handle: HostRange, offsets: list[int], blocks: list[int]) -> None:
        """Copy host blocks ``handle.start + offsets`` into ``blocks``, one copy per run of
        consecutive offsets."""
        host = self.host
        assert host is not None
        run = 0
        for i in range(1, len(offsets) + 1):
            if i == len(offsets) or offsets[i] != offsets[i - 1] + 1:
                part = HostRange(handle.start + offsets[run], i - run)
                host.copy_in(part, blocks[run:i])
                run = i

    def make_host_room(self, num_blocks: int) -> None:
        """Drop host copies of lost contexts (oldest first) until ``num_blocks`` fit for a swap."""
        host = self.host
        while host is not None and self._offloaded and not host.can_hold(num_blocks):
            self._drop_offloaded(next(iter(self._offloaded)))

    def _drop_offloaded(self, program_id: str) -> None:
        found = self._offloaded.pop(program_id, None)
        if found is not None and self.host is not None:
            self.host.release(found[0])

    # --- accounting -------------------------------------------------------
    @property
    def num_free_blocks(self) -> int:
        return len(self.free_ids) + len(self.evictable)

    @property
    def num_used_blocks(self) -> int:
        return self.num_blocks - self.num_free_blocks

    @property
    def prefix_hit_rate(self) -> float:
        return (
            self.prefix_hit_tokens / self.prefix_queried_tokens
            if self.prefix_queried_tokens
            else 0.0
        )

    def blocks_for(self, num_tokens: int) -> int:
        return cdiv(num_tokens, self.block_size)

    # --- prefix cache -----------------------------------------------------
    def _extend_hashes(self, seq: Sequence, num_full_blocks: int) -> None:
        bs = self.block_size
        hashes = seq.block_hashes
        prev = hashes[-1] if hashes else 0
        for i in range(len(hashes), num_full_blocks):
            prev = hash((prev, tuple(seq.token_ids[i * bs : (i + 1) * bs])))
            hashes.append(prev)

    def lookup_prefix(self, seq: Sequence) -> list[int]:
        """Blocks holding the longest cached prefix of ``seq`` (at least one token is left to compute)."""
        if not self.enable_prefix_caching:
            return []
        limit = (seq.num_tokens - 1) // self.block_size
        self._extend_hashes(seq, limit)
        bs = self.block_size
        hits: list[int] = []
        for i in range(limit):
            block = self.hash_to_block.get(seq.block_hashes[i])
            # The token check makes a hash collision a miss instead of wrong output.
            if block is None or self.block_tokens[block] != tuple(
                seq.token_ids[i * bs : (i + 1) * bs]
            ):
                break
            hits.append(block)
        return hits

    def acquire_prefix(self, seq: Sequence, blocks: SequenceABC[int], restoring: int = 0) -> None:
        """Give a sequence with no blocks the cached prefix ``blocks`` (from :meth:`lookup_prefix`);
        ``restoring`` more blocks follow from the host copy (:meth:`restore_prefix`)."""
        assert not seq.block_table, "acquire_prefix on a sequence that holds blocks"
        for b in blocks:
            self._ref(b)
        program_id = seq.call.program_id
        self.evictable.call_admitted(program_id)
        if not restoring:
            self._drop_offloaded(program_id)  # the call holds its context now
        seq.block_table = list(blocks)
        seq.num_computed_tokens = len(blocks) * self.block_size
        seq.num_registered_blocks = len(blocks)
        if not seq.admitted_before:
            cached = len(blocks) + restoring
            self.prefix_queried_tokens += seq.num_prompt_tokens
            self.prefix_hit_tokens += cached * self.block_size
            seq.num_cached_tokens = cached * self.block_size
            self._count_recomputed(seq, cached)

    def _count_recomputed(self, seq: Sequence, hits: int) -> None:
        """Add the full blocks of the program's previous context that ``seq`` shares
        but did not find cached: their tokens are computed again."""
        previous = self._previous.get(seq.call.program_id)
        if not previous:
            return
        limit = min(len(previous), (seq.num_tokens - 1) // self.block_size)
        self._extend_hashes(seq, limit)
        hashes = seq.block_hashes
        common = 0
        while common < limit and hashes[common] == previous[common]:
            common += 1
        if common > hits:
            self.recomputed_prompt_tokens += (common - hits) * self.block_size

    def register_computed_blocks(self, seq: Sequence) -> None:
        """Offer the sequence's newly completed full blocks to the prefix cache."""
        if not self.enable_prefix_caching:
            return
        full = seq.num_computed_tokens // self.block_size
        if full <= seq.num_registered_blocks:
            return
        self._extend_hashes(seq, full)
        bs = self.block_size
        for i in range(seq.num_registered_blocks, full):
            h = seq.block_hashes[i]
            block = seq.block_table[i]
            if h not in self.hash_to_block and self.block_hash[block] is None:
                self.hash_to_block[h] = block
                self.block_hash[block] = h
                self.block_tokens[block] = tuple(seq.token_ids[i * bs : (i + 1) * bs])
        seq.num_registered_blocks = full

    # --- allocation -------------------------------------------------------
    def _ref(self, block: int) -> None:
        if self.ref_counts[block] == 0:
            self.evictable.acquire(block)
        self.ref_counts[block] += 1

    def _take_free_block(self) -> int:
        if self.free_ids:
            block = self.free_ids.popleft()
        elif (victim := self.evictable.victim(self.clock())) is not None:
            block = victim  # type: ignore[assignment]
            self.evictable.discard(block)
            h = self.block_hash[block]
            if h is not None and self.hash_to_block.get(h) == block:
                del self.hash_to_block[h]
            self.block_hash[block] = None
            self.block_tokens[block] = None
        else:
            raise OutOfBlocks("no free KV block")
        self.ref_counts[block] = 1
        return block

    def allocate(self, seq: Sequence, num_tokens: int) -> None:
        """Grow ``seq``'s block table so it can hold ``num_tokens`` tokens."""
        need = self.blocks_for(num_tokens) - len(seq.block_table)
        if need > self.num_free_blocks:
            raise OutOfBlocks(f"{seq.seq_id} needs {need} blocks, {self.num_free_blocks} free")
        for _ in range(need):
            seq.block_table.append(self._take_free_block())

    def call_finished(
        self, seq: Sequence, reload_token_s: float, waiting: int, batch_slots: int
    ) -> float | None:
        """``seq`` completed: remember its context (for :attr:`recomputed_prompt_tokens`) and
        let the retention policy pin it before :meth:`free` releases it (the blocks only this
        sequence holds, that the prefix cache keeps). ``reload_token_s``: seconds to
        recompute one token; ``waiting``: calls waiting for KV blocks now. Returns the
        pin's TTL, or None."""
        if not self.enable_prefix_caching:
            return None
        previous = self._previous
        previous[seq.call.program_id] = seq.block_hashes[: seq.num_registered_blocks]
        previous.move_to_end(seq.call.program_id)
        if len(previous) > MAX_TRACKED_PROGRAMS:
            previous.popitem(last=False)
        if not self.evictable.enabled:
            return None
        refs, hashes = self.ref_counts, self.block_hash
        blocks = sum(1 for b in seq.block_table if refs[b] == 1 and hashes[b] is not None)
        return self.evictable.call_finished(
            seq.call.program_id,
            self.clock(),
            blocks=blocks,
            reload_s=blocks * self.block_size * reload_token_s,
            pressure=Pressure(waiting, batch_slots),
        )

    def program_ended(self, program_id: str) -> None:
        """The program will not call again: forget its context and its pin."""
        self._previous.pop(program_id, None)
        self.evictable.program_ended(program_id)
        self._drop_offloaded(program_id)

    def free(self, seq: Sequence) -> None:
        """Release all of ``seq``'s blocks; cached ones stay reusable until evicted."""
        # Reverse order: a prefix's first blocks are freed last, so they are evicted last.
        program_id = seq.call.program_id
        for block in reversed(seq.block_table):
            self.ref_counts[block] -= 1
            if self.ref_counts[block] == 0:
                if self.block_hash[block] is not None:
                    self.evictable.release(block, program_id)
                else:
                    self.free_ids.append(block)
        seq.block_table = []
        seq.num_registered_blocks = 0
