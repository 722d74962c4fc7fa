"""Program-level serving metrics: from what each program recorded to the numbers a run reports.

Definitions (Autellix's, where the paper gives one):

- *latency*: a program's end-to-end time, from its arrival to its return.
- *token latency*: latency divided by the tokens the program generated (all
  threads together); the paper's program-level token latency.
- *throughput*: completed programs per second over the run's makespan (first
  arrival to last completion).
- *wait share*: the fraction of a program's time during which none of its
  calls was streaming tokens and none of its tools was running, as the
  client sees it (queueing, and prefill before the first token).
- *Jain's fairness* over the programs' token rates (1 / token latency):
  1.0 when every program progresses at the same rate, 1/n at worst.
- *throughput at equal latency*: the highest arrival rate whose mean latency
  stays at or under a target, interpolated linearly between swept rates.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence

import msgspec

from agentrt.bench.engine_queue import EngineQueue
from agentrt.protocol.engine import StepMoments
from agentrt.sim.metrics import jain_index, percentile
from agentrt.sim.sweep import rate_at_target


class CallStats(msgspec.Struct, kw_only=True):
    ttft: float | None
    itl: float | None  # mean gap between streamed tokens of this call
    prompt_tokens: int
    completion_tokens: int
    # The call's place in time and in the program's DAG (for replaying the workload in the simulator).
    start: float = 0.0  # seconds after the program started
    end: float = 0.0
    thread_id: str | None = None
    call_id: str | None = None
    parent_call_id: str | None = None
    server_queue_time: float | None = None  # agentrt servers only
    server_model_time: float | None = None


# The errors of programs a run's time limit stopped: cut while running, or never started.
CUT = "cancelled: run timed out"
NOT_STARTED = "not started: run timed out"


class ProgramResult(msgspec.Struct, kw_only=True):
    """One program of a run, reduced to what the report needs (kept in the JSON)."""

    index: int
    workload: str
    arrival: float  # seconds after the run started
    latency: float
    completion_tokens: int
    prompt_tokens: int
    wait_share: float
    tool_time: float
    calls: list[CallStats]
    error: str | None = None

    @property
    def token_latency(self) -> float:
        return self.latency / max(self.completion_tokens, 1)


class Distribution(msgspec.Struct, kw_only=True):
    mean: float = math.nan
    p50: float = math.nan
    p95: float = math.nan
    p99: float = math.nan

    @classmethod
    def of(cls, values: Sequence[float]) -> Distribution:
        if not values:
            return cls()
        ordered = sorted(values)
        return cls(
            mean=sum(ordered) / len(ordered),
            p50=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
        )


class ServerCounters(msgspec.Struct, kw_only=True):
    """What an agentrt server's ``/metrics`` counted during the run (absent for other servers)."""

    preemptions: float = 0.0
    swaps: float = 0.0
    recomputes: float = 0.0
    queue_time_share: float | None = None  # server-side queue time / server-side call latency
    # The prefix cache and KV retention (agentrt's embedded engine; zero elsewhere): prompt
    # tokens looked up and found cached, tokens of a program's previous context computed
    # again, and pins made, reused by the next call, expired, yielded, held for a tool;
    # contexts lost while their program may come back, and of those restored from the host
    # pool; calls the pins held back from admission and the seconds they were held.
    prefix_queries: float = 0.0
    prefix_hits: float = 0.0
    recomputed_prompt_tokens: float = 0.0
    kv_pins: float = 0.0
    kv_pins_reused: float = 0.0
    kv_pins_expired: float = 0.0
    kv_pins_yielded: float = 0.0
    kv_pins_held: float = 0.0
    kv_contexts_lost: float = 0.0
    kv_contexts_restored: float = 0.0
    kv_admissions_held: float = 0.0
    kv_admissions_held_s: float = 0.0
    # The engine's step-time sums over the run's steps, to fit a simulator profile to.
    step_moments: StepMoments | None = None


def prefix_hit_rate(counters: ServerCounters | None) -> float:
    """The share of the run's prompt tokens found in the prefix cache (NaN when none was looked up)."""
    if counters is None or counters.prefix_queries <= 0:
        return math.nan
    return counters.prefix_hits / counters.prefix_queries


class RunSummary(msgspec.Struct, kw_only=True):
    rate: float  # offered arrival rate, programs/s
    started: float = 0.0  # seconds after the sweep began (runs of several systems interleave)
    programs: int
    completed: int
    errors: int  # programs that failed (those the time limit stopped are ``cut``, not errors)
    makespan: float
    throughput: float  # completed programs/s
    token_throughput: float  # generated tokens/s
    latency: Distribution
    token_latency: Distribution
    wait_share: float
    ttft: Distribution
    itl: Distribution
    calls: int
    prompt_tokens_per_call: float
    completion_tokens_per_call: float
    fairness: float
    server: ServerCounters | None = None
    by_workload: dict[str, Distribution] = {}
    engine_queue: EngineQueue | None = None  # the engine's own queue, where it reports one
    cut: int = 0  # programs the run's time limit stopped or never started


def covered(intervals: Sequence[tuple[float, float]]) -> float:
    """Total length of the union of ``intervals``."""
    total, end = 0.0, -math.inf
    for lo, hi in sorted(intervals):
        if hi <= end:
            continue
        total += hi - max(lo, end)
        end = hi
    return total


def summarise(rate: float, results: Sequence[ProgramResult], server: ServerCounters | None = None) -> RunSummary:
    done = [r for r in results if r.error is None]
    cut = sum(1 for r in results if r.error in (CUT, NOT_STARTED))
    calls = [c for r in done for c in r.calls]
    makespan = max((r.arrival + r.latency for r in results), default=0.0) - min((r.arrival for r in results), default=0.0)
    by_workload: dict[str, Distribution] = {}
    for name in sorted({r.workload for r in done}):
        by_workload[name] = Distribution.of([r.latency for r in done if r.workload == name])
    return RunSummary(
        rate=rate,
        programs=len(results),
        completed=len(done),
        errors=len(results) - len(done) - cut,
        cut=cut,
        makespan=makespan,
        throughput=len(done) / makespan if makespan > 0 else 0.0,
        token_throughput=sum(r.completion_tokens for r in done) / makespan if makespan > 0 else 0.0,
        latency=Distribution.of([r.latency for r in done]),
        token_latency=Distribution.of([r.token_latency for r in done]),
        wait_share=sum(r.wait_share for r in done) / len(done) if done else math.nan,
        ttft=Distribution.of([c.ttft for c in calls if c.ttft is not None]),
        itl=Distribution.of([c.itl for c in calls if c.itl is not None]),
        calls=len(calls),
        prompt_tokens_per_call=sum(c.prompt_tokens for c in calls) / len(calls) if calls else math.nan,
        completion_tokens_per_call=sum(c.completion_tokens for c in calls) / len(calls) if calls else math.nan,
        fairness=jain_index([1.0 / r.token_latency for r in done if r.latency > 0]),
        server=server,
        by_workload=by_workload,
    )


class AtLatency(msgspec.Struct, kw_only=True):
    """Throughput at a latency target: ``rate`` exactly, or a bound when the sweep did not cross it."""

    rate: float
    bound: str = "="  # "=" interpolated, ">=" target met at every swept rate, "<" met at none

    def __str__(self) -> str:
        return f"{'' if self.bound == '=' else self.bound}{self.rate:.3g}"


def rate_at_latency(points: Sequence[tuple[float, float]], target: float) -> AtLatency:
    """The highest arrival rate whose mean latency is within ``target``, from (rate, latency) points.

    The simulator's rule (one definition for both): walk the curve from the
    lowest rate, stop at the first crossing above the target, interpolate.
    """
    curve = [(r, lat) for r, lat in points if not math.isnan(lat)]
    rate, capped = rate_at_target(curve, target)
    if rate is None:
        return AtLatency(rate=min((r for r, _ in points), default=0.0), bound="<")
    return AtLatency(rate=rate, bound=">=" if capped else "=")


def interpolate(points: Sequence[tuple[float, float]], rate: float) -> float:
    """A curve's value at ``rate`` (linear between swept rates, clamped at the ends)."""
    curve = sorted((r, v) for r, v in points if not math.isnan(v))
    if not curve:
        return math.nan
    if rate <= curve[0][0]:
        return curve[0][1]
    for (r0, v0), (r1, v1) in itertools.pairwise(curve):
        if rate <= r1:
            return v0 + (v1 - v0) * (rate - r0) / (r1 - r0) if r1 > r0 else v1
    return curve[-1][1]
