"""Sweeps over policies, balancers and arrival rates, and the headline comparison.

*Throughput at equal latency* (the Autellix paper's measure): for each
policy, the largest arrival rate whose mean latency stays under a target,
linearly interpolated between the swept rates; each policy's value divided by
FCFS's is its ratio. The default target is :data:`DEFAULT_TARGET_FACTOR` times
FCFS's mean at the lowest swept rate (a light load), i.e. "how much load can
each policy take before its mean latency is that many times the unloaded one".

It is computed on two latencies: the mean program latency, and the paper's
program-level token latency (latency / tokens generated, per program). They
weigh programs differently: the first is dominated by the longest programs
(LATS trees in ``mixed``), the second by short programs that wait, which is
where a least-attained-service order acts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from itertools import pairwise, product
from typing import Literal

import msgspec

from agentrt.scheduling import SchedulerConfig
from agentrt.sim.metrics import RunResult
from agentrt.sim.profile import EngineProfile
from agentrt.sim.simulator import SimConfig, simulate
from agentrt.sim.spec import ProgramSpec
from agentrt.sim.workloads import poisson_arrivals

DEFAULT_TARGET_FACTOR = 3.0
DEFAULT_LOAD_POINTS = (0.25, 0.5, 0.75, 1.0, 1.25, 1.5, 2.0, 2.5)
ASSUMED_PREFIX_HIT = 0.8  # for the capacity estimate only

LatencyMetric = Literal["latency", "token_latency"]


def mean_of(result: RunResult, metric: LatencyMetric) -> float:
    """A run's mean program latency (s) or mean program-level token latency (s/token)."""
    return result.latency.mean if metric == "latency" else result.token_latency.mean


class SweepPoint(msgspec.Struct, kw_only=True):
    # policy; +retention mode when several are compared; +oracle:NAME when one ranks the
    # calls; @balancer when several are compared
    label: str
    policy: str
    balancer: str
    rate: float
    result: RunResult
    retention: str = "off"
    oracle: str = "none"


class Headline(msgspec.Struct, kw_only=True):
    label: str
    rate_at_target: float | None  # None: latency above target even at the lowest rate
    capped: bool  # True: under target at every swept rate (a lower bound)
    ratio_vs_fcfs: float | None


class SweepReport(msgspec.Struct, kw_only=True):
    workload: str
    profile: str
    engines: int
    programs: int
    seed: int
    rates: list[float]
    latency_target_s: float
    scheduler: dict[str, object]
    sim: dict[str, object]
    points: list[SweepPoint]
    headline: list[Headline]  # at equal mean program latency
    token_latency_target_s: float  # seconds per generated token
    token_latency_headline: list[Headline]  # at equal mean program-level token latency


def estimated_capacity(
    programs: Sequence[ProgramSpec], profile: EngineProfile, engines: int
) -> float:
    """Programs/s one cluster sustains at full batch (rough, to place the default rates)."""
    batch = profile.max_batch_size
    decode = sum(p.decode_tokens for p in programs) / len(programs)
    calls = [c for p in programs for c in p.calls]
    context = sum(c.prompt_tokens + c.decode_tokens / 2 for c in calls) / len(calls)
    step = profile.step_time(0, batch, int(batch * context))
    prefill = sum(p.prompt_tokens for p in programs) / len(programs) * (1 - ASSUMED_PREFIX_HIT)
    seconds = decode * step / batch + prefill * profile.prefill_token_s
    return engines / seconds if seconds > 0 else 1.0


def default_rates(
    programs: Sequence[ProgramSpec], profile: EngineProfile, engines: int
) -> list[float]:
    capacity = estimated_capacity(programs, profile, engines)
    return [float(f"{capacity * f:.3g}") for f in DEFAULT_LOAD_POINTS]


def rate_at_target(
    points: Sequence[tuple[float, float]], target: float
) -> tuple[float | None, bool]:
    """Largest rate whose latency is under ``target`` on a (rate, latency) curve; (value, capped)."""
    ordered = sorted(points)
    if not ordered or ordered[0][1] > target:
        return None, False
    best = ordered[0][0]
    for (r0, l0), (r1, l1) in pairwise(ordered):
        if l1 <= target:
            best = r1
            continue
        return r0 + (r1 - r0) * (target - l0) / (l1 - l0) if l1 > l0 else r0, False
    return best, True


def policy_of(label: str) -> str:
    return label.split("@")[0].split("+")[0]


def headline(
    points: Sequence[SweepPoint], target: float, metric: LatencyMetric = "latency"
) -> list[Headline]:
    labels = list(dict.fromkeys(p.label for p in points))
    rates = {
        label: rate_at_target(
            [(p.rate, mean_of(p.result, metric)) for p in points if p.label == label],
            target,
        )
        for label in labels
    }
    fcfs = next((rates[label][0] for label in labels if policy_of(label) == "fcfs"), None)

    def ratio(rate: float | None) -> float | None:
        return rate / fcfs if fcfs and rate is not None else None

    return [
        Headline(
            label=label,
            rate_at_target=rates[label][0],
            capped=rates[label][1],
            ratio_vs_fcfs=ratio(rates[label][0]),
        )
        for label in labels
    ]


def run_sweep(
    workload: str,
    programs: Sequence[ProgramSpec],
    profile: EngineProfile,
    scheduler: SchedulerConfig,
    sim: SimConfig,
    policies: Sequence[str],
    balancers: Sequence[str],
    rates: Sequence[float],
    seed: int,
    latency_target: float | None = None,
    target_factor: float = DEFAULT_TARGET_FACTOR,
    on_point: Callable[[SweepPoint], None] | None = None,
    token_latency_target: float | None = None,
    retentions: Sequence[str] | None = None,
    oracles: Sequence[str] | None = None,
) -> SweepReport:
    """Simulate every (balancer, policy, retention mode, oracle, rate), FCFS without
    retention or oracle first; then the headline ratios at equal mean latency and at equal mean token
    latency (targets in seconds and seconds per token; None: ``target_factor`` x
    FCFS's at the lowest rate, without retention when both modes run)."""
    ordered = sorted(policies, key=lambda p: p != "fcfs")
    modes = sorted(retentions or [sim.kv_retention], key=lambda m: m != "off")
    oracles = sorted(oracles or [sim.oracle], key=lambda o: o != "none")
    points: list[SweepPoint] = []
    for balancer in balancers:
        for policy in ordered:
            config = msgspec.structs.replace(scheduler, policy=policy)
            for mode, oracle in product(modes, oracles):
                sim_b = msgspec.structs.replace(
                    sim, balancer=balancer, kv_retention=mode, oracle=oracle
                )
                label = policy + (f"+{mode}" if len(modes) > 1 else "")
                label += f"+oracle:{oracle}" if oracle != "none" else ""
                label += f"@{balancer}" if len(balancers) > 1 else ""
                for rate in sorted(rates):
                    arrivals = poisson_arrivals(programs, rate, seed)
                    result = simulate(arrivals, profile, config, sim_b)
                    result.rate = rate
                    point = SweepPoint(
                        label=label,
                        policy=policy,
                        balancer=balancer,
                        rate=rate,
                        result=result,
                        retention=mode,
                        oracle=oracle,
                    )
                    points.append(point)
                    if on_point is not None:
                        on_point(point)
    base = [
        p
        for p in points
        if p.policy == "fcfs" and p.retention == modes[0] and p.oracle == oracles[0]
    ] or points
    lowest = min(p.rate for p in base)

    def light_load(metric: LatencyMetric) -> float:
        light = [mean_of(p.result, metric) for p in base if p.rate == lowest]
        return target_factor * sum(light) / len(light)

    if latency_target is None:
        latency_target = light_load("latency")
    if token_latency_target is None:
        token_latency_target = light_load("token_latency")
    return SweepReport(
        workload=workload,
        profile=profile.name,
        engines=sim.engines,
        programs=len(programs),
        seed=seed,
        rates=sorted(rates),
        latency_target_s=latency_target,
        scheduler=msgspec.to_builtins(scheduler),
        sim=msgspec.to_builtins(sim),
        points=points,
        headline=headline(points, latency_target),
        token_latency_target_s=token_latency_target,
        token_latency_headline=headline(points, token_latency_target, "token_latency"),
    )
