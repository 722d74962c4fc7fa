"""One engine's KV cache in blocks, with a prefix cache keyed by token segments.

State per segment key (see :mod:`agentrt.sim.spec`): how many of its tokens
have KV on the GPU (``resident``) and how many live calls hold it
(``refs``). Keys nobody holds stay cached for later prefix hits (when prefix
caching is on) and are evicted least recently used first when blocks run
out. Each key occupies ``ceil(resident / block_size)`` blocks; sharing is
per key, so two calls with the same system prompt and history hold those
blocks once. Caching is block-granular: a hit never covers a partial block.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Iterable, Sequence

from agentrt.sim.spec import Segment


class KvCache:
    __slots__ = (
        "block_size",
        "capacity",
        "evicted_blocks",
        "lru",
        "prefix_caching",
        "refs",
        "resident",
        "used",
    )

    def __init__(self, capacity_blocks: int, block_size: int, prefix_caching: bool) -> None:
        self.capacity = capacity_blocks
        self.block_size = block_size
        self.prefix_caching = prefix_caching
        self.resident: dict[str, int] = {}
        self.refs: dict[str, int] = {}
        self.lru: OrderedDict[str, None] = OrderedDict()  # resident keys nobody holds, oldest first
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
        refs, lru = self.refs, self.lru
        for key, _ in segments:
            refs[key] = refs.get(key, 0) + 1
            lru.pop(key, None)

    def release(self, segments: Iterable[Segment]) -> None:
        refs = self.refs
        for key, _ in segments:
            left = refs[key] - 1
            if left:
                refs[key] = left
                continue
            del refs[key]
            if key not in self.resident:
                continue
            if self.prefix_caching:
                self.lru[key] = None
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
        self.lru.pop(key, None)
        return tokens

    def evict_to_fit(self) -> None:
        """Evict cached keys nobody holds, least recently used first, until within capacity."""
        lru = self.lru
        while self.used > self.capacity and lru:
            key = next(iter(lru))
            self.evicted_blocks += self.blocks(self.drop(key))
