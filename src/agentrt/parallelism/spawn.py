"""Start N local ranks of one gloo group, with a rendezvous no other run can join.

The parent process hosts the rendezvous store itself, on a port the OS picks
and the store keeps bound until every rank has exited: no window between
choosing a free port and binding it, so runs started at the same time (test
sessions, helpers) never meet on one port. Each run's keys also carry a
random prefix, so a rank that reached a foreign store could not pair with
that run's ranks. A start that fails before every rank has joined (a process
killed while connecting) is retried once with a fresh store; any failure
after that is a :class:`ParallelError` that names the rank and the cause.
"""

from __future__ import annotations

import contextlib
import os
import sys
import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch._C._distributed_c10d import PrefixStore, TCPStore
from torch.multiprocessing.spawn import (
    ProcessExitedException,
    ProcessRaisedException,
    start_processes,
)

from agentrt.log import get_logger
from agentrt.parallelism.errors import ParallelError

_HOST = "127.0.0.1"
_JOINED = "joined"
_DONE = "done"
_ALL_DONE = "all-done"


def _pin(rank: int, n: int) -> None:
    """One core per rank, as one device per rank, when the host has a core for every rank: every
    thread of the process, and the threads gloo starts later (they inherit it), so a rank's
    communication runs beside its own compute instead of on a core another rank computes on.
    With more ranks than cores the OS places them (pinned, two ranks on one core would run at
    half the speed of the others)."""
    if not hasattr(os, "sched_setaffinity"):  # Linux only; elsewhere the OS places threads
        return
    cores = sorted(os.sched_getaffinity(0))
    if n > len(cores):
        return
    for task in os.listdir("/proc/self/task"):
        with contextlib.suppress(ProcessLookupError):  # a thread that ended meanwhile
            os.sched_setaffinity(int(task), {cores[rank]})


def _entry(
    rank: int,
    target: Callable[..., None],
    n: int,
    port: int,
    prefix: str,
    seconds: float,
    args: tuple[Any, ...],
) -> None:
    torch.set_num_threads(1)
    _pin(rank, n)
    timeout = timedelta(seconds=seconds)
    client = TCPStore(_HOST, port, None, False, timeout=timeout)
    store = PrefixStore(prefix, client)
    dist.init_process_group("gloo", store=store, rank=rank, world_size=n, timeout=timeout)
    try:
        store.add(_JOINED, 1)  # gloo has connected every pair by now
        target(rank, n, *args)
        # No rank closes its pairs while a peer still talks to it. The store, not gloo,
        # carries this wait, so a peer's failure stays the error that is reported.
        if store.add(_DONE, 1) == n:
            store.set(_ALL_DONE, "1")
        store.wait([_ALL_DONE])
    finally:
        dist.destroy_process_group()
    # Skip interpreter teardown: destroying gloo's and the store's threads from static
    # destructors can abort a rank whose work is done and written.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _raised(what: str, n: int, exc: ProcessRaisedException) -> ParallelError:
    lines = [line.strip() for line in str(exc).strip().splitlines() if line.strip()]
    where = next((line for line in reversed(lines) if line.startswith("File ")), "")
    return ParallelError(
        f"{what} failed on {n} processes (rank {exc.error_index}): {lines[-1] if lines else exc}"
        + (f" ({where})" if where else "")
    )


def run_ranks(
    target: Callable[..., None],
    n: int,
    args: tuple[Any, ...] = (),
    *,
    what: str = "parallel run",
    timeout: float = 120.0,
    retries: int = 1,
) -> None:
    """Run ``target(rank, n, *args)`` in ``n`` spawned processes that form one gloo group.

    ``target`` must be importable by name (spawn pickles it) and does its own
    reporting (files, the store is not exposed); it returns nothing.
    """
    log = get_logger("agentrt.parallelism")
    for attempt in range(retries + 1):
        store = TCPStore(
            _HOST, 0, None, True, timeout=timedelta(seconds=timeout), wait_for_workers=False
        )
        prefix = f"agentrt/{os.getpid()}/{uuid.uuid4().hex}"
        try:
            start_processes(  # type: ignore[no-untyped-call]
                _entry,
                args=(target, n, store.port, prefix, timeout, args),
                nprocs=n,
                join=True,
                start_method="spawn",
            )
            return
        except ProcessRaisedException as exc:
            raise _raised(what, n, exc) from None
        except ProcessExitedException as exc:
            joined = int(PrefixStore(prefix, store).add(_JOINED, 0))
            cause = f"exit code {exc.exit_code}" + (
                f" ({exc.signal_name})" if exc.signal_name else ""
            )
            if joined < n and attempt < retries:
                log.warning(
                    "parallel.rendezvous_retry",
                    what=what,
                    rank=exc.error_index,
                    cause=cause,
                    joined=joined,
                    ranks=n,
                )
                continue
            stage = "while joining the group" if joined < n else "after joining the group"
            raise ParallelError(
                f"{what}: process {exc.error_index} of {n} exited {stage} with {cause}"
            ) from None
        finally:
            del store
    raise AssertionError("unreachable: the last attempt returns or raises")
