"""What a simulation run measured, per program and in summary.

- program latency: last call's completion minus the program's arrival;
- program-level token latency (the Autellix paper's metric): latency divided
  by the tokens the program generated (all threads);
- throughput: programs completed per second of the run (first arrival to
  last completion);
- wait-time breakdown, summed over a program's calls: *queue* (ready but not
  computing: waiting, preempted, swapping), *execution* (steps the call took
  part in), *tool* (interrupt delays before calls);
- Jain's fairness index over programs of ``ideal / latency``, where *ideal* is
  the program's latency alone on an idle engine (critical path of its calls'
  delays, prefill and decode steps, no prefix-cache hits): 1 when every
  program is slowed down equally.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

import msgspec

from agentrt.sim.profile import EngineProfile
from agentrt.sim.spec import ProgramSpec

if TYPE_CHECKING:
    from agentrt.sim.engine import LiveCall, SimEngine


class ProgramOutcome:
    __slots__ = (
        "arrival",
        "calls",
        "execution",
        "finished",
        "ideal",
        "kind",
        "preemptions",
        "program_id",
        "queue",
        "tokens",
        "tool",
    )

    def __init__(self, program_id: str, kind: str, arrival: float) -> None:
        self.program_id = program_id
        self.kind = kind
        self.arrival = arrival
        self.finished = arrival
        self.calls = 0
        self.tokens = 0
        self.queue = self.execution = self.tool = 0.0
        self.preemptions = 0
        self.ideal = 0.0

    def add_call(self, live: LiveCall, now: float) -> None:
        self.calls += 1
        self.tokens += live.spec.decode_tokens
        self.execution += live.executing
        self.queue += max(0.0, now - live.ready - live.executing)
        self.tool += live.spec.delay
        self.preemptions += live.preemptions

    def finish(self, now: float, profile: EngineProfile, spec: ProgramSpec) -> None:
        self.finished = now
        self.ideal = ideal_latency(spec, profile)

    @property
    def latency(self) -> float:
        return self.finished - self.arrival


def isolated_call_seconds(prompt: int, decode: int, profile: EngineProfile) -> float:
    """One call alone on an idle engine: chunked prefill steps, then one step per token."""
    budget = profile.prefill_budget
    seconds = 0.0
    done = 0
    while done < prompt:
        chunk = min(budget, prompt - done)
        done += chunk
        seconds += profile.step_time(chunk, 0, done)
    steps = decode - 1  # the last prefill step emits the first token
    # sum of contexts prompt+1 .. prompt+steps
    kv = steps * prompt + steps * (steps + 1) // 2
    return (
        seconds + steps * (profile.step_overhead_s + profile.decode_seq_s) + profile.kv_token_s * kv
    )


def ideal_latency(spec: ProgramSpec, profile: EngineProfile) -> float:
    """Critical path of the program's DAG with every call run alone (delays included)."""
    finish: list[float] = []
    for call in spec.calls:
        start = max((finish[p] for p in call.parents), default=0.0) + call.delay
        finish.append(
            start + isolated_call_seconds(call.prompt_tokens, call.decode_tokens, profile)
        )
    return max(finish)


def percentile(sorted_values: Sequence[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100) of an ascending sequence."""
    if not sorted_values:
        return math.nan
    pos = (len(sorted_values) - 1) * q / 100.0
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (sorted_values[hi] - sorted_values[lo]) * (pos - lo)


def jain_index(values: Sequence[float]) -> float:
    if not values:
        return math.nan
    total = sum(values)
    squares = sum(v * v for v in values)
    return total * total / (len(values) * squares) if squares else 1.0


class LatencyStats(msgspec.Struct, kw_only=True):
    mean: float
    p50: float
    p95: float
    p99: float

    @classmethod
    def of(cls, values: Sequence[float]) -> LatencyStats:
        ordered = sorted(values)
        mean = sum(ordered) / len(ordered) if ordered else math.nan
        return cls(
            mean=mean,
            p50=percentile(ordered, 50),
            p95=percentile(ordered, 95),
            p99=percentile(ordered, 99),
        )


class WaitBreakdown(msgspec.Struct, kw_only=True):
    """Mean seconds per program, summed over its calls."""

    queue: float
    execution: float
    tool: float


class EngineSummary(msgspec.Struct, kw_only=True):
    preemptions: int
    swaps_out: int
    swaps_in: int
    recomputes: int
    swap_blocks: int
    swap_seconds: float
    prefix_hit_rate: float  # cached prompt tokens / prompt tokens of calls put on the GPU
    evicted_blocks: int
    busy_fraction: float
    steps: int
    decode_tokens: int
    prefill_tokens: int
    # KV retention (zero with it off): contexts pinned after a call, pins whose program
    # called again in time, pins that expired first, pins that yielded to memory pressure.
    pins: int = 0
    pins_reused: int = 0
    pins_expired: int = 0
    pins_yielded: int = 0
    contexts_lost: int = 0  # evicted while their program may call again (see RetentionPolicy)
    contexts_offloaded: int = 0  # lost contexts copied to the host pool
    contexts_restored: int = 0  # of those, copied back for the program's next call
    # Calls pins held back from admission (max_hold_s), and the seconds from each one's
    # first hold to its admission.
    held_back: int = 0
    held_back_s: float = 0.0


class RunResult(msgspec.Struct, kw_only=True):
    """One (policy, arrival rate) point."""

    policy: str
    rate: float = 0.0
    programs: int
    calls: int
    duration_s: float
    throughput: float  # programs / s
    latency: LatencyStats
    token_latency: LatencyStats  # s / generated token, per program
    latency_by_kind: dict[str, LatencyStats]
    wait: WaitBreakdown
    jain_fairness: float
    engines: EngineSummary
    sim_seconds: float  # wall-clock time the simulation took


def summarize(
    outcomes: Sequence[ProgramOutcome],
    engines: Sequence[SimEngine],
    profile: EngineProfile,
    policy: str,
    wall_seconds: float,
) -> RunResult:
    if not outcomes:
        raise ValueError("no program completed")
    start = min(o.arrival for o in outcomes)
    end = max(o.finished for o in outcomes)
    duration = max(end - start, 1e-9)
    n = len(outcomes)
    kinds = sorted({o.kind for o in outcomes})
    counters = [e.counters for e in engines]
    prefill = sum(c.prefill_tokens for c in counters)
    cached = sum(c.cached_tokens for c in counters)
    busy = sum(c.busy_s for c in counters)
    return RunResult(
        policy=policy,
        programs=n,
        calls=sum(o.calls for o in outcomes),
        duration_s=duration,
        throughput=n / duration,
        latency=LatencyStats.of([o.latency for o in outcomes]),
        token_latency=LatencyStats.of([o.latency / max(1, o.tokens) for o in outcomes]),
        latency_by_kind={
            k: LatencyStats.of([o.latency for o in outcomes if o.kind == k]) for k in kinds
        },
        wait=WaitBreakdown(
            queue=sum(o.queue for o in outcomes) / n,
            execution=sum(o.execution for o in outcomes) / n,
            tool=sum(o.tool for o in outcomes) / n,
        ),
        jain_fairness=jain_index([o.ideal / o.latency if o.latency > 0 else 1.0 for o in outcomes]),
        engines=EngineSummary(
            preemptions=sum(c.preemptions for c in counters),
            swaps_out=sum(c.swaps_out for c in counters),
            swaps_in=sum(c.swaps_in for c in counters),
            recomputes=sum(c.recomputes for c in counters),
            swap_blocks=sum(c.swap_blocks for c in counters),
            swap_seconds=sum(c.swap_s for c in counters),
            prefix_hit_rate=cached / (cached + prefill) if cached + prefill else 0.0,
            evicted_blocks=sum(e.kv.evicted_blocks for e in engines),
            busy_fraction=busy / (duration * len(engines)),
            steps=sum(c.steps for c in counters),
            decode_tokens=sum(c.decode_tokens for c in counters),
            prefill_tokens=prefill,
            pins=sum(e.retention.counters.pins for e in engines),
            pins_reused=sum(e.retention.counters.reused for e in engines),
            pins_expired=sum(e.retention.counters.expired for e in engines),
            pins_yielded=sum(e.retention.counters.yielded for e in engines),
            contexts_lost=sum(e.retention.counters.lost for e in engines),
            contexts_offloaded=sum(c.offloads for c in counters),
            contexts_restored=sum(c.restores for c in counters),
            held_back=sum(e.retention.counters.held_back for e in engines),
            held_back_s=sum(e.retention.counters.held_back_s for e in engines),
        ),
        sim_seconds=wall_seconds,
    )
