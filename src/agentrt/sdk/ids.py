"""Identifiers for programs and calls: UUIDv7 layout (RFC 9562), time-ordered and unique.

Program ids (:func:`uuid7`): a 48-bit Unix-millisecond timestamp leads, so
ids sort by creation time in logs and tables; the remaining 74 bits are
random. They come from a private generator seeded from ``os.urandom`` (a
system call per id would cost more than the rest of the SDK's per-call work),
reseeded in every forked child, and out of reach of ``random.seed()`` in user
code, so two processes never share a sequence.

Call ids (:func:`call_id`), minted on every LLM call, follow RFC 9562's
"fixed bit-length dedicated counter" method: the process's own prefix (its
start time in milliseconds and 26 random bits, drawn again in a forked
child) and a counter of twelve decimal digits (valid hex digits) that starts
at a random point. They are as unique as program ids, sort in creation order
within a process, and cost one counter step and one ``str`` of an int each.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Iterator

_random = random.Random(os.urandom(32))
_bits = _random.getrandbits
_time_ns = time.time_ns
# Version 7 in the third group; the fourth group's top bits are the RFC 9562 variant (0b10).
_format = "%08x-%04x-7%03x-%04x-%012x".__mod__


def _reseed() -> None:
    _random.seed(os.urandom(32))
    _new_call_sequence()


os.register_at_fork(after_in_child=_reseed)


def uuid7() -> str:
    """A new UUIDv7 in canonical form (``xxxxxxxx-xxxx-7xxx-yxxx-xxxxxxxxxxxx``).

    Formatted from word-sized pieces in one step: the 48-bit millisecond
    timestamp, then 12 random bits (rand_a) and 62 (rand_b: 14 in the fourth
    group after the variant, 48 in the last).
    """
    ms = _time_ns() // 1_000_000
    a = _bits(26)  # rand_a, and the top 14 bits of rand_b
    return _format(
        ((ms >> 16) & 0xFFFF_FFFF, ms & 0xFFFF, a >> 14, 0x8000 | (a & 0x3FFF), _bits(48))
    )


_FIRST_CALL = 10**11
_call_prefix = ""
_call_counter: Iterator[int] = itertools.count()


def _new_call_sequence() -> None:
    global _call_prefix, _call_counter
    # A UUIDv7 of this moment less its last group; the counter fills that group.
    _call_prefix = uuid7()[:24]
    # Twelve digits from the start, and room for 6e11 calls before a thirteenth.
    _call_counter = itertools.count(_FIRST_CALL + _bits(38))


_new_call_sequence()


def call_id() -> str:
    """A new call id: a UUIDv7 made of this process's prefix and the next counter value."""
    return _call_prefix + str(next(_call_counter))


def short_token() -> str:
    """Eight random hex characters: a prefix that keeps ids minted elsewhere apart."""
    return os.urandom(4).hex()
