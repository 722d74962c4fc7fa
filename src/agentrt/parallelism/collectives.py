"""Per-call costs of the collectives as the runtime runs them, measured on local gloo processes.

The wire's alpha and beta (fitted to bare ``all_reduce`` calls) leave out
what each call costs the runtime on top: DTensor's ``redistribute`` and its
Python path for an all-reduce or all-gather, the handshake of a send. On a
host of a few shared cores that fixed part is most of a small collective, so
a plan's predicted time depends on how many calls it makes, not only on the
bytes. Each primitive is measured through the same code the runtime uses, at
a few sizes, and fitted to a line ``seconds = fixed + per_byte * bytes``.
The calls are interleaved (each pass times one call of every primitive at
every size, ``_REPEATS`` passes, the median kept per primitive and size), so
a burst of load on the host falls on all of them alike instead of on
whichever primitive happened to be timed then.

A call measured between barriers misses one more cost a plan pays: at each
synchronizing call a rank waits for the slowest of the others, and with
several ranks sharing a few cores their compute between calls does not end
together. ``sync`` measures that wait as its own primitive: every rank runs
a fixed burst of small operator calls and then one all-reduce, many times
over; what the loop takes beyond the bursts alone (all ranks computing at
once) and the calls' own line is the wait per call.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

import torch

from agentrt.parallelism.errors import ParallelError

SIZES = (4 << 10, 64 << 10, 1 << 20)  # bytes of the whole tensor
PRIMITIVES = (
    "all-reduce",
    "all-gather",
    "local-chunk",
    "send/recv",
    "broadcast",
    "all-gather/plain",
)
_REPEATS = 31
SYNC = "sync"  # the per-call wait, stored beside the primitives' samples
_BURST_OPS = 48  # small operator calls between two synchronizing calls (a layer's worth)
_SYNC_CALLS = 20
_SYNC_ROUNDS = 21


def fit_line(samples: list[tuple[int, float]]) -> tuple[float, float]:
    """``(fixed, per_byte)`` of ``seconds = fixed + per_byte * bytes`` over ``(bytes, seconds)`` samples.

    Least squares of the relative error (each sample weighted by one over its
    time squared), so the small messages a layer sends weigh as much as the
    large ones; neither coefficient is allowed below zero.
    """
    if len({b for b, _ in samples}) < 2:
        raise ParallelError("fitting a collective's line needs at least two message sizes")
    w = [1.0 / (s * s) for _, s in samples]
    sw = sum(w)
    sx = sum(wi * b for wi, (b, _) in zip(w, samples, strict=True))
    sy = sum(wi * s for wi, (_, s) in zip(w, samples, strict=True))
    sxx = sum(wi * b * b for wi, (b, _) in zip(w, samples, strict=True))
    sxy = sum(wi * b * s for wi, (b, s) in zip(w, samples, strict=True))
    det = sw * sxx - sx * sx
    per_byte = max((sw * sxy - sx * sy) / det, 0.0)
    fixed = (sy - per_byte * sx) / sw
    if fixed < 0:  # the line through the origin that fits best
        fixed, per_byte = 0.0, sxy / sxx
    return fixed, per_byte


def _once(step: Callable[[], object]) -> float:
    """One call, started on every rank together by a barrier."""
    import torch.distributed as dist

    dist.barrier()
    start = time.perf_counter()
    step()
    return time.perf_counter() - start


def _timed(step: Callable[[], object]) -> float:
    """The median of ``_REPEATS`` calls, each started together by a barrier."""
    return statistics.median(_once(step) for _ in range(_REPEATS))


def _sync_wait(rank: int, mesh: object) -> float:
    """Seconds a rank waits per all-reduce that follows a burst of operator calls on every rank."""
    import torch.distributed as dist
    from torch.distributed.tensor import Partial, Replicate

    from agentrt.parallelism.comm import Step
    from agentrt.parallelism.runtime import _run_steps

    x, w = torch.randn(16, 64), torch.randn(64, 64)
    small = torch.ones(2, 512)  # 4 KiB, a layer's activation all-reduce on a tiny model
    reduce = (Step("all-reduce", Partial(), Replicate()),)

    def burst() -> None:
        y = x
        for _ in range(_BURST_OPS // 2):
            y = torch.tanh(y @ w)

    def loop(with_call: bool) -> float:
        dist.barrier()
        start = time.perf_counter()
        for _ in range(_SYNC_CALLS):
            burst()
            if with_call:
                _run_steps(small, reduce, mesh, tuple(small.shape))  # type: ignore[arg-type]
        dist.barrier()  # both loops end when the slowest rank does
        return time.perf_counter() - start

    loop(True)
    together, alone = [], []
    for _ in range(_SYNC_ROUNDS):  # interleaved, so a change in the host's load hits both alike
        together.append(loop(True))
        alone.append(loop(False))
    extra = statistics.median(a - b for a, b in zip(together, alone, strict=True))
    call = _timed(lambda: _run_steps(small, reduce, mesh, tuple(small.shape)))  # type: ignore[arg-type]
    return max(extra / _SYNC_CALLS - call, 0.0)


def _calls(rank: int, n: int, size: int, mesh: object) -> dict[str, Callable[[], object]]:
    """One call of each primitive on a tensor of ``size`` bytes, as the runtime (or a pipeline) makes it."""
    import torch.distributed as dist
    from torch.distributed.tensor import Partial, Replicate, Shard

    from agentrt.parallelism.comm import Step
    from agentrt.parallelism.runtime import _run_steps

    shape = (n, size // 4 // n)
    whole = torch.ones(shape)
    piece = whole.chunk(n)[rank].contiguous()
    reduce = (Step("all-reduce", Partial(), Replicate()),)
    gather = (Step("all-gather", Shard(0), Replicate()),)
    chunk = (Step("local-chunk", Replicate(), Shard(0)),)

    def ping_pong() -> None:  # ranks 0 and 1: a round trip, two transfers
        if rank == 0:
            dist.send(whole, 1)
            dist.recv(whole, 1)
        elif rank == 1:
            dist.recv(whole, 0)
            dist.send(whole, 0)

    return {
        "all-reduce": lambda: _run_steps(whole, reduce, mesh, shape),  # type: ignore[arg-type]
        "all-gather": lambda: _run_steps(piece, gather, mesh, shape),  # type: ignore[arg-type]
        "local-chunk": lambda: _run_steps(whole, chunk, mesh, shape),  # type: ignore[arg-type]
        "send/recv": ping_pong,
        "broadcast": lambda: dist.broadcast(whole, 0),
        "all-gather/plain": lambda: dist.all_gather(list(whole.chunk(n)), piece),
    }


def _worker(rank: int, n: int, out: str) -> None:
    """Time each primitive at each size on this rank; rank 0 writes the samples."""
    from agentrt.parallelism.runtime import init_mesh

    torch.set_num_threads(1)
    mesh = init_mesh(n)
    calls = {size: _calls(rank, n, size, mesh) for size in SIZES}
    for by_prim in calls.values():
        for call in by_prim.values():
            call()  # the first call of a size pays one-time costs
    taken: dict[tuple[str, int], list[float]] = {}
    for _ in range(_REPEATS):  # interleaved: every primitive and size once per pass
        for size, by_prim in calls.items():
            for prim, call in by_prim.items():
                taken.setdefault((prim, size), []).append(_once(call))
    samples: dict[str, list[tuple[int, float]]] = {p: [] for p in PRIMITIVES}
    for (prim, size), seconds in taken.items():
        median = statistics.median(seconds)
        samples[prim].append((size, median / 2 if prim == "send/recv" else median))
    wait = _sync_wait(rank, mesh)
    if rank == 0:
        samples[SYNC] = [(0, wait)]
        Path(out).write_text(json.dumps(samples))


def measure(n: int, cache_dir: Path | None = None) -> dict[str, list[tuple[int, float]]]:
    """Samples ``(bytes, seconds)`` per primitive on ``n`` local gloo processes (cached when a folder is given)."""
    import tempfile

    from agentrt.parallelism.spawn import run_ranks

    if n < 2:
        raise ParallelError(f"measuring collectives needs at least 2 processes, got {n}")
    path = cache_dir / f"parallel-gloo-collectives-{n}.json" if cache_dir else None
    if path is not None and path.is_file():
        raw = json.loads(path.read_text())
    else:
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "samples.json")
            run_ranks(_worker, n, (out,), what="collective measurement")
            raw = json.loads(Path(out).read_text())
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(json.dumps(raw))
    return {p: [(int(b), float(s)) for b, s in raw[p]] for p in (*PRIMITIVES, SYNC) if p in raw}


def lines(samples: dict[str, list[tuple[int, float]]]) -> tuple[tuple[str, float, float], ...]:
    """The fitted line of every measured primitive, in :class:`~agentrt.parallelism.comm.CostModel`'s form."""
    return tuple((p, *fit_line(samples[p])) for p in PRIMITIVES if p in samples)


def sync_wait(samples: dict[str, list[tuple[int, float]]]) -> float:
    """The measured wait per synchronizing call (0 for samples measured without it)."""
    return float(samples[SYNC][0][1]) if SYNC in samples else 0.0
