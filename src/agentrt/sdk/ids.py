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


def _reseed() -> None:
    _random.seed(os.urandom(32))


os.register_at_fork(after_in_child=_reseed)


def uuid7() -> str:
    """A new UUIDv7 in canonical form (``xxxxxxxx-xxxx-7xxx-yxxx-xxxxxxxxxxxx``)."""
    ms = time.time_ns() // 1_000_000
    rand = _bits(74)
    value = (
        (ms & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version 7
        | (rand >> 62) << 64  # rand_a: 12 bits
        | 0b10 << 62  # RFC 9562 variant
        | (rand & 0x3FFF_FFFF_FFFF_FFFF)  # rand_b: 62 bits
    )
    h = f"{value:032x}"
    return f"{h[:8]}-{h[8:12]}-{h[12:16]}-{h[16:20]}-{h[20:]}"


def short_token() -> str:
    """Eight random hex characters: a prefix that keeps ids minted elsewhere apart."""
    return os.urandom(4).hex()
