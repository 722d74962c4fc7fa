"""The simulator's prediction for the very workload a benchmark run served.

Each measured program becomes a simulator program (``agentrt.sim.spec``):
one call per measured call with its real prompt and decode token counts, its
parent as the SDK recorded it (the call its thread followed, or the call a
thread forked after), and as delay the time between the parent's end and
its own start (tool time and program logic). A call whose prompt extends its
same-thread parent's prompt shares that prefix, so the simulated prefix
cache sees the reuse the real one did. Programs keep their measured arrival
times, so the simulator runs exactly the programs, in the order and at the
times, that the server saw.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import msgspec

from agentrt.bench.program_metrics import Distribution, ProgramResult
from agentrt.sim.spec import CallSpec, ProgramSpec

if TYPE_CHECKING:
    from agentrt.scheduling import SchedulerConfig


class Prediction(msgspec.Struct, kw_only=True):
    """Measured against simulated program latency for one (system, rate) run."""

    label: str
    policy: str
    rate: float
    measured: Distribution
    simulated: Distribution


def sim_program(result: ProgramResult) -> ProgramSpec:
    """One measured program as a simulator program (calls in the order they were sent)."""
    calls = sorted(result.calls, key=lambda c: c.start)
    index_of = {c.call_id: i for i, c in enumerate(calls) if c.call_id is not None}
    threads: dict[str | None, int] = {}
    prompt_keys: list[tuple[tuple[str, int], ...]] = []
    specs: list[CallSpec] = []
    for i, call in enumerate(calls):
        parent = index_of.get(call.parent_call_id) if call.parent_call_id is not None else None
        if parent is None and call.call_id is None and i > 0:
            parent = i - 1  # a server that reports no call ids: treat the program as sequential
        if parent is not None and parent >= i:
            parent = None
        prompt = max(1, call.prompt_tokens)
        decode = max(1, call.completion_tokens)
        keys: tuple[tuple[str, int], ...] = ((f"{result.index}/{i}/in", prompt),)
        if parent is not None and calls[parent].thread_id == call.thread_id:
            shared = sum(n for _, n in prompt_keys[parent])
            if prompt > shared:
                keys = (*prompt_keys[parent], (f"{result.index}/{i}/in", prompt - shared))
        prompt_keys.append(keys)
        ready_at = calls[parent].end if parent is not None else 0.0
        specs.append(CallSpec(
            index=i,
            segments=(*keys, (f"{result.index}/{i}/out", decode)),
            prompt_tokens=prompt,
            decode_tokens=decode,
            parents=() if parent is None else (parent,),
            delay=max(0.0, call.start - ready_at),
            thread=threads.setdefault(call.thread_id, len(threads)),
        ))
    return ProgramSpec(f"p{result.index}", result.workload, specs, arrival=result.arrival)


def predict(
    systems: Sequence[Any],
    profile: Any,
    max_batch_size: int | None = None,
    servers: Mapping[str, SchedulerConfig] | None = None,
    server_slots: int | None = None,
) -> list[Prediction]:
    """Simulate every run of every ``agentrt/<policy>`` system with its own measured programs.

    ``servers`` maps the labels of the llama.cpp systems (the server alone,
    agentrt in front of one) to the scheduler each is simulated with (the
    server alone: first come, first served; a front: its policy and its
    ``[scheduler]`` table), on ``server_slots`` slots; and those of agentrt
    servers run with a config file to its ``[scheduler]`` table (such a
    server missing from it is not simulated: its label does not say it). The simulated engine
    is then the profile's: with a profile of the server's costs, each
    front's prediction is its policy's ideal on the programs it served (the
    simulated engine preempts; the server does not), and the server alone's
    says how well the profile models it.
    """
    from agentrt.scheduling import SchedulerConfig
    from agentrt.sim.simulator import SimConfig, simulate

    servers = servers or {}
    predictions = []
    for system in systems:
        label = system.label
        scheduler = servers.get(label)
        engine = profile
        if label == "llama.cpp" or label.endswith("+llama.cpp"):
            if scheduler is None:
                continue  # a llama.cpp system the caller did not describe
            sim_config = SimConfig()
            if server_slots is not None:
                engine = msgspec.structs.replace(profile, max_batch_size=server_slots)
        elif label.startswith("agentrt/"):
            # "agentrt/<policy>[<config>]+kv-<mode>", the last two parts as bench compare ran it.
            name, _, retention = label.removeprefix("agentrt/").partition("+kv-")
            if scheduler is None:
                if "[" in name:
                    continue  # run with a config file the caller did not give
                scheduler = SchedulerConfig(policy=name)
            sim_config = SimConfig(kv_retention=retention) if retention else SimConfig()
            if max_batch_size is not None:
                engine = msgspec.structs.replace(profile, max_batch_size=max_batch_size)
        else:
            continue  # peers
        policy = scheduler.policy
        for run, programs in zip(system.runs, system.programs, strict=True):
            done = [p for p in programs if p.error is None and p.calls]
            if not done:
                continue
            result = simulate([sim_program(p) for p in done], engine, scheduler, sim_config)
            predictions.append(Prediction(
                label=system.label,
                policy=policy,
                rate=run.rate,
                measured=run.latency,
                simulated=Distribution(mean=result.latency.mean, p50=result.latency.p50,
                                       p95=result.latency.p95, p99=result.latency.p99),
            ))
    return predictions


def print_predictions(console: Any, predictions: Sequence[Prediction], profile_name: str) -> None:
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=f"simulator ({profile_name}) against measurement, same programs and arrivals (latency s)")
    columns = ("system", "policy", "rate/s", "measured mean", "simulated mean", "measured p50", "simulated p50",
               "measured p95", "simulated p95")
    for column in columns:
        table.add_column(column, justify="left" if column in ("system", "policy") else "right")
    for p in predictions:
        table.add_row(escape(p.label), p.policy, f"{p.rate:g}", f"{p.measured.mean:.1f}", f"{p.simulated.mean:.1f}",
                      f"{p.measured.p50:.1f}", f"{p.simulated.p50:.1f}", f"{p.measured.p95:.1f}",
                      f"{p.simulated.p95:.1f}")
    console.print(table)
