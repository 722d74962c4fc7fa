"""One engine's KV cache in blocks, with a prefix cache keyed by token segments.

State per segment key (see :mod:`agentrt.sim.spec`): how many of its tokens
have KV on the GPU (``resident``) and how many live calls hold it
(``refs``). Keys nobody holds stay cached for later prefix hits (when prefix
caching is on); which of them go when blocks run out is the
:class:`~agentrt.scheduling.RetentionPolicy`'s choice (the one the engine
uses): least recently released first with retention off, pinned programs'
contexts last with it on. Each key occupies ``ceil(resident / block_size)``
blocks; sharing is per key, so two calls with the same system prompt and
history hold those blocks once. Caching is block-granular: a hit never covers
a partial block.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from agentrt.scheduling import RetentionConfig, RetentionPolicy
from agentrt.sim.spec import Segment


class KvCache:
    __slots__ = (
        "block_size",
        "capacity",
        "evictable",
        "evicted_blocks",
        "prefix_caching",
        "refs",
        "resident",
        "used",
    )

    def __init__(
        self,
        capacity_blocks: int,
        block_size: int,
        prefix_caching: bool,
        retention: RetentionPolicy | None = None,
    ) -> None:
        self.capacity = capacity_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.resident: dict[str, int] = {}
        self.refs: dict[str, int] = {}
        # Resident keys nobody holds, and the order they go in.
        if retention is None:  # (a policy with nothing evictable is falsy: test for None)
            retention = RetentionPolicy(RetentionConfig(mode="off"), capacity_blocks)
        self.evictable = retention
        self.used = 0  # blocks
        self.evicted_blocks = 0

    def blocks(self, tokens: int) -> int:
        return -(-tokens // self.block_size)

    def cached_prefix(self, segments: Iterable[Segment], limit: int) -> int:
        """Tokens of the sequence, from its start and up to ``limit``, whose KV is resident."""
        hit = 0
        resident = self.resident
        for key, n in segments:
            have = resident.get(key, 0)
            if have < n:
                hit += have
                break
            hit += n
            if hit >= limit:
                break
        hit = min(hit, limit)
        return hit - hit % self.block_size

    def acquire(self, segments: Iterable[Segment]) -> None:
        refs, evictable = self.refs, self.evictable
        for key, _ in segments:
            held = refs.get(key, 0)
            if not held:
                evictable.discard(key)
            refs[key] = held + 1

    def release(self, segments: Sequence[Segment], program_id: str | None = None) -> None:
        """The call's hold on its keys ends; keys nobody holds stay cached as ``program_id``'s."""
        refs = self.refs
        resident = self.resident
        for key, _ in segments:
            left = refs[key] - 1
            if left:
                refs[key] = left
                continue
            del refs[key]
            tokens = resident.get(key)
            if tokens is None:
                continue
            if self.prefix_caching:
                self.evictable.release(key, program_id)
            else:
                self.drop(key)

    def grow(self, key: str, tokens: int) -> None:
        """Make the first ``tokens`` tokens of ``key`` resident (KV computed or swapped in)."""
        old = self.resident.get(key, 0)
        if tokens > old:
            self.used += self.blocks(tokens) - self.blocks(old)
            self.resident[key] = tokens

    def grow_span(
        self, segments: Sequence[Segment], starts: Sequence[int], before: int, after: int
    ) -> None:
        """Make resident the KV of a call's sequence positions ``[before, after)``
        (``starts``: each segment's first position). Run for every call of every
        window, so :meth:`grow` is inlined here."""
        i = len(segments) - 1
        while i >= 0 and starts[i] >= after:
            i -= 1
        resident = self.resident
        bs = self.block_size
        while i >= 0:
            key, n = segments[i]
            start = starts[i]
            tokens = after - start
            if n < tokens:
                tokens = n
            old = resident.get(key, 0)
            if tokens > old:
                self.used += (tokens + bs - 1) // bs - (
                    old + bs - 1
                ) // bs  # blocks(new) - blocks(old)
                resident[key] = tokens
            if start <= before:
                break
            i -= 1

    def drop(self, key: str) -> int:
        """Forget the key's KV (evicted or swapped out); returns the tokens it held."""
        tokens = self.resident.pop(key, 0)
        self.used -= self.blocks(tokens)
        self.evictable.discard(key)
        return tokens

    def evict_to_fit(self, now: float) -> None:
        """Evict cached keys nobody holds, in the retention policy's order, until within capacity."""
        victim = self.evictable.victim
        while self.used > self.capacity:
            key = victim(now)
            if key is None:
                break
            self.evicted_blocks += self.blocks(self.drop(key))  # type: ignore[arg-type]
