"""Program and call ids: UUIDv7, unique, ordered by creation time."""

from __future__ import annotations

import time
import uuid
from concurrent.futures import ThreadPoolExecutor

from agentrt.sdk.ids import call_id, short_token, uuid7


def test_ids_are_valid_version_7_uuids() -> None:
    for _ in range(100):
        parsed = uuid.UUID(uuid7())
        assert parsed.version == 7
        assert parsed.variant == uuid.RFC_4122


def test_ids_carry_the_creation_time_in_milliseconds() -> None:
    before = time.time_ns() // 1_000_000
    value = uuid.UUID(uuid7()).int >> 80
    after = time.time_ns() // 1_000_000
    assert before <= value <= after


def test_ids_from_later_milliseconds_sort_after_earlier_ones() -> None:
    first = uuid7()
    start = time.monotonic_ns()
    while time.monotonic_ns() - start < 2_000_000:  # let at least one millisecond pass
        pass
    assert uuid7() > first


def test_ids_are_unique_across_threads() -> None:
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [uuid7() for _ in range(2000)], range(8)))
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat)


def test_short_tokens_are_eight_hex_characters() -> None:
    token = short_token()
    assert len(token) == 8
    int(token, 16)


def test_seeding_the_global_random_module_does_not_repeat_ids() -> None:
    import random

    random.seed(7)
    first = [uuid7() for _ in range(5)]
    random.seed(7)
    second = [uuid7() for _ in range(5)]
    assert set(first).isdisjoint(second)


def test_a_forked_child_does_not_repeat_the_parents_ids() -> None:
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # child: send one id and leave at once
        os.write(write, uuid7().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    parent_id = uuid7()
    assert child_id and child_id[14:] != parent_id[14:]


def test_ids_are_in_canonical_form_with_every_random_bit_used() -> None:
    ids = [uuid7() for _ in range(2000)]
    for value in ids:
        assert str(uuid.UUID(value)) == value  # lower-case hex, dashes where UUIDs have them
    values = [uuid.UUID(v).int for v in ids]
    random_mask = (1 << 74) - 1
    rand_a = [(v >> 64) & 0xFFF for v in values]
    rand_b = [v & ((1 << 62) - 1) for v in values]
    ored = 0
    for a, b in zip(rand_a, rand_b, strict=True):
        ored |= a << 62 | b
    assert ored == random_mask  # no random bit is stuck at zero


def test_call_ids_are_canonical_version_7_uuids_in_creation_order() -> None:
    ids = [call_id() for _ in range(2000)]
    for value in ids:
        parsed = uuid.UUID(value)
        assert parsed.version == 7 and parsed.variant == uuid.RFC_4122
        assert str(parsed) == value
    assert ids == sorted(ids)
    assert len(set(ids)) == len(ids)


def test_call_ids_are_unique_across_threads() -> None:
    with ThreadPoolExecutor(8) as pool:
        batches = list(pool.map(lambda _: [call_id() for _ in range(2000)], range(8)))
    flat = [i for batch in batches for i in batch]
    assert len(set(flat)) == len(flat)


def test_a_forked_child_mints_call_ids_of_its_own() -> None:
    import os

    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:
        os.write(write, call_id().encode())
        os._exit(0)
    os.close(write)
    child_id = os.read(read, 64).decode()
    os.waitpid(pid, 0)
    parent_id = call_id()
    assert child_id and child_id[:24] != parent_id[:24]  # another prefix
