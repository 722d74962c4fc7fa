"""Identifiers for programs and calls: UUIDv7 layout (RFC 9562), time-ordered and unique.

A 48-bit Unix-millisecond timestamp leads, so ids sort by creation time in
logs and tables; the remaining 74 bits are random. They come from a private
generator seeded from ``os.urandom`` (a system call per id would cost more
than the rest of the SDK's per-call work), reseeded in every forked child, and
out of reach of ``random.seed()`` in user code, so two processes never share a
sequence.
"""

from __future__ import annotations

import os
import random
import time

_random = random.Random(os.urandom(32))
_bits = _random.getrandbits
_time_ns = time.time_ns
# Version 7 in the third group; the fourth group's top bits are the RFC 9562 variant (0b10).
_format = "%08x-%04x-7%03x-%04x-%012x".__mod__


def _reseed() -> None:
    _random.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def uuid7() -> str:
    """A new UUIDv7 in canonical form (``xxxxxxxx-xxxx-7xxx-yxxx-xxxxxxxxxxxx``).

    Formatted from word-sized pieces in one step (it runs on every LLM call):
    the 48-bit millisecond timestamp, then 12 random bits (rand_a) and 62
    (rand_b: 14 in the fourth group after the variant, 48 in the last).
    """
    ms = _time_ns() // 1_000_000
    a = _bits(26)  # rand_a, and the top 14 bits of rand_b
    return _format(
        ((ms >> 16) & 0xFFFF_FFFF, ms & 0xFFFF, a >> 14, 0x8000 | (a & 0x3FFF), _bits(48))
    )


def short_token() -> str:
    """Eight random hex characters: a prefix that keeps ids minted elsewhere apart."""
    return os.urandom(4).hex()
