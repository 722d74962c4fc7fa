"""Thread safety: 64 threads x 50 calls through one shared client; ids never cross programs."""

from __future__ import annotations

import itertools
import threading
from collections import defaultdict

from tests.unit.sdk.recording import RecordingServer, ask

import agentrt

PROGRAMS = 8
THREADS_PER_PROGRAM = 8  # 64 worker threads in all
CALLS = 50


def test_64_threads_x_50_calls_keep_every_call_in_its_own_program_and_thread(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    start = threading.Barrier(PROGRAMS * THREADS_PER_PROGRAM)
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            start.wait()
            for i in range(CALLS):
                ctx = agentrt.current_program()
                assert ctx is not None
                # The prompt says where the call was made; the server compares it with the headers.
                ask(client, f"{ctx.program_id}|{ctx.thread_id}|{i}")
        except BaseException as exc:  # surfaced below; a thread cannot fail the test by itself
            errors.append(exc)

    def driver() -> None:
        with agentrt.program():
            workers = [threading.Thread(target=worker) for _ in range(THREADS_PER_PROGRAM)]
            for w in workers:
                w.start()
            for w in workers:
                w.join()

    drivers = [threading.Thread(target=driver) for _ in range(PROGRAMS)]
    for d in drivers:
        d.start()
    for d in drivers:
        d.join()
    assert errors == []

    calls = server.calls()
    assert len(calls) == PROGRAMS * THREADS_PER_PROGRAM * CALLS
    assert len({c.call for c in calls}) == len(calls)  # call ids are unique
    chains: dict[tuple[str, str], list[tuple[int, str | None, str | None]]] = defaultdict(list)
    for c in calls:
        program_id, thread_id, index = c.prompt.split("|")
        assert (c.program, c.thread) == (program_id, thread_id)
        chains[(program_id, thread_id)].append((int(index), c.parent, c.call))

    programs = {p for p, _ in chains}
    assert len(programs) == PROGRAMS
    for program_id in programs:
        threads = {t for p, t in chains if p == program_id}
        assert threads == {str(i) for i in range(1, THREADS_PER_PROGRAM + 1)}
    for chain in chains.values():
        chain.sort()
        assert [i for i, _, _ in chain] == list(range(CALLS))
        assert chain[0][1] is None  # forked before the program made any call
        for (_, _, previous), (_, parent, _) in itertools.pairwise(chain):
            assert parent == previous
    # Every program was announced once and ended once.
    requests = server.program_requests()
    assert sorted(p for m, p in requests if m == "POST") == sorted(programs)
    assert sorted(p for m, p in requests if m == "DELETE") == sorted(programs)
