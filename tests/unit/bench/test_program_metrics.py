"""Program-level metrics: the definitions the benchmark reports."""

from __future__ import annotations

import math

import pytest

from agentrt.bench.program_metrics import (
    CallStats,
    Distribution,
    ProgramResult,
    covered,
    interpolate,
    rate_at_latency,
    summarise,
)
from agentrt.sim.metrics import jain_index


def program(index: int, latency: float, tokens: int, *, arrival: float = 0.0, error: str | None = None,
            workload: str = "chat") -> ProgramResult:
    return ProgramResult(index=index, workload=workload, arrival=arrival, latency=latency, completion_tokens=tokens,
                         prompt_tokens=10 * tokens, wait_share=0.5, tool_time=0.0,
                         calls=[CallStats(ttft=0.1, itl=0.02, prompt_tokens=10 * tokens, completion_tokens=tokens)],
                         error=error)


def test_distributions_and_fairness_use_the_simulators_definitions() -> None:
    d = Distribution.of([5.0, 1.0, 4.0, 2.0, 3.0])
    assert (d.mean, d.p50) == (3.0, 3.0) and d.p95 == pytest.approx(4.8)
    assert math.isnan(Distribution.of([]).p99)
    equal = summarise(1.0, [program(i, 2.0, 20) for i in range(3)])
    assert equal.fairness == 1.0
    skewed = summarise(1.0, [program(0, 1.0, 100), program(1, 100.0, 1)])
    assert skewed.fairness == pytest.approx(jain_index([100.0, 0.01]))


def test_covered_time_is_the_union_of_intervals() -> None:
    assert covered([(0, 2), (1, 3), (5, 6)]) == 4
    assert covered([(0, 10), (2, 3)]) == 10
    assert covered([]) == 0


def test_summary_counts_errors_and_uses_the_makespan() -> None:
    results = [program(0, 4.0, 40, arrival=0.0), program(1, 2.0, 10, arrival=2.0, workload="react"),
               program(2, 1.0, 0, arrival=3.0, error="boom")]
    run = summarise(0.5, results)
    assert (run.programs, run.completed, run.errors) == (3, 2, 1)
    assert run.makespan == 4.0 and run.throughput == 0.5
    assert run.latency.mean == 3.0
    assert run.token_latency.mean == pytest.approx((0.1 + 0.2) / 2)
    assert run.token_throughput == 50 / 4.0
    assert run.calls == 2 and run.completion_tokens_per_call == 25
    assert set(run.by_workload) == {"chat", "react"}
    assert run.fairness == pytest.approx(jain_index([10.0, 5.0]))


def test_rate_at_latency_interpolates_the_crossing() -> None:
    points = [(0.1, 10.0), (0.2, 20.0), (0.3, 60.0)]
    at = rate_at_latency(points, 40.0)
    assert at.bound == "=" and at.rate == pytest.approx(0.25)
    assert rate_at_latency(points, 100.0).bound == ">="
    assert rate_at_latency(points, 100.0).rate == 0.3
    assert rate_at_latency(points, 5.0).bound == "<"
    # A system that completed nothing at any rate sits below the lowest rate swept.
    assert str(rate_at_latency([(0.3, math.nan), (0.6, math.nan)], 10.0)) == "<0.3"
    # A dip after the first crossing does not count: the curve is read from low load upwards.
    assert rate_at_latency([(0.1, 10.0), (0.2, 50.0), (0.3, 30.0)], 40.0).rate == pytest.approx(0.175)


def test_interpolate_clamps_at_the_ends() -> None:
    points = [(1.0, 10.0), (2.0, 20.0)]
    assert interpolate(points, 1.5) == 15.0
    assert interpolate(points, 0.5) == 10.0
    assert interpolate(points, 3.0) == 20.0
