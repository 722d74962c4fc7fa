"""Driving a server with agent programs: Poisson arrivals, one program per arrival, traced.

Every program of a run is drawn up front from the seeded workload, and its
arrival time comes from one seeded sequence of exponential gaps scaled by
the rate, so two systems (or two rates) see the same programs in the same
order. Programs run concurrently on one ``agentrt.OpenAI`` / ``AsyncOpenAI``
pair; synchronous programs run in worker threads. A program that raises is
recorded with its error and the run goes on.
"""

from __future__ import annotations

import math
import random
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import anyio
import httpx
import msgspec

from agentrt.bench.cutoff import Cutoff
from agentrt.bench.program_metrics import (
    CUT,
    NOT_STARTED,
    CallStats,
    ProgramResult,
    RunSummary,
    ServerCounters,
    covered,
    summarise,
)
from agentrt.log import get_logger
from agentrt.protocol.engine import EngineStats, StepMoments

log = get_logger(__name__)


@dataclass
class Target:
    """One system under test: an OpenAI-compatible base URL and the model to ask for."""

    label: str
    base_url: str
    model: str = ""
    api_key: str = "EMPTY"
    extra_body: dict[str, Any] = field(default_factory=dict)
    app: Any = None  # an agentrt app served in this process (``agentrt.serve_in_process``) instead of a URL
    queue_metrics: str = ""  # the root of the engine whose /metrics counts its own queue (llama.cpp)


def unit_arrivals(count: int, seed: int) -> list[float]:
    """Arrival times of a rate-1 Poisson process (divide by the rate to get seconds)."""
    rng = random.Random(seed)
    t, times = 0.0, []
    for _ in range(count):
        times.append(t)
        t += rng.expovariate(1.0)
    return times


def programs_for(duration: float | None, num_programs: int | None, rate: float, seed: int) -> int:
    """How many programs a run at ``rate`` has: all arrivals before ``duration``, at most ``num_programs``."""
    if duration is None:
        return num_programs or 0
    cap = num_programs or 1_000_000
    times = unit_arrivals(min(cap, int(duration * rate * 3) + 20), seed)
    return sum(1 for t in times[:cap] if t / rate < duration)


def program_result(index: int, workload: str, arrival: float, start: float, end: float, trace: Any,
                   error: str | None) -> ProgramResult:
    """Reduce one program's trace to the figures the report needs."""
    latency = end - start
    active = [(c.first_token, c.end) for c in trace.calls if c.first_token is not None]
    active += [(t.start, t.end) for t in trace.tools]
    wait = 1.0 - covered(active) / latency if latency > 0 else 0.0
    calls = [
        CallStats(
            ttft=c.ttft,
            itl=sum(c.inter_token) / len(c.inter_token) if c.inter_token else None,
            prompt_tokens=c.prompt_tokens,
            completion_tokens=c.completion_tokens,
            start=c.start - start,
            end=c.end - start,
            thread_id=c.thread_id,
            call_id=c.call_id,
            parent_call_id=c.parent_call_id,
            server_queue_time=c.server_queue_time,
            server_model_time=c.server_model_time,
        )
        for c in trace.calls
        if c.error is None
    ]
    return ProgramResult(
        index=index,
        workload=workload,
        arrival=arrival,
        latency=latency,
        completion_tokens=trace.completion_tokens,
        prompt_tokens=trace.prompt_tokens,
        wait_share=min(1.0, max(0.0, wait)),
        tool_time=covered([(t.start, t.end) for t in trace.tools]),
        calls=calls,
        error=error,
    )


_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?\s+(\S+)")


def parse_prometheus(text: str) -> dict[str, float]:
    """Metric name -> value summed over label sets (enough for counters and histogram sums)."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        match = _SAMPLE.match(line)
        if match is None:
            continue
        try:
            value = float(match.group(3))
        except ValueError:
            continue
        values[match.group(1)] = values.get(match.group(1), 0.0) + value
    return values


def metrics_url(base_url: str) -> str:
    root = base_url.rstrip("/")
    return (root[: -len("/v1")] if root.endswith("/v1") else root) + "/metrics"


async def _get(target: Target, url: str) -> Any:
    """GET ``url`` on the target's server (over the in-process transport for an embedded app)."""
    if target.app is not None:
        from agentrt.serving import inprocess

        transport = inprocess.AsyncASGITransport(target.app)
        async with inprocess.http.AsyncClient(transport=transport, timeout=10.0) as http:
            return await http.get(url, headers=_auth(target))
    async with httpx.AsyncClient(timeout=10.0) as http:
        return await http.get(url, headers=_auth(target))


def _auth(target: Target) -> dict[str, str]:
    return {"Authorization": f"Bearer {target.api_key}"} if target.api_key else {}


class ServerSnapshot(msgspec.Struct, kw_only=True):
    """An agentrt server's counters at one moment: ``/metrics`` and the engine's step-time sums."""

    metrics: dict[str, float]
    step_moments: StepMoments | None = None


async def scrape(target: Target) -> ServerSnapshot | None:
    """The server's agentrt counters, or None when it is not an agentrt server (or cannot be reached)."""
    url = metrics_url(target.base_url)
    try:
        response = await _get(target, url)
    except Exception as e:  # metrics are optional: any failure means "not ours"
        log.debug("no server metrics", url=url, error=repr(e))
        return None
    if response.status_code != 200 or "agentrt:" not in response.text:
        return None
    snapshot = ServerSnapshot(metrics=parse_prometheus(response.text))
    try:
        stats = await _get(target, target.base_url.rstrip("/") + "/engine/stats")
        if stats.status_code == 200:
            snapshot.step_moments = msgspec.json.decode(stats.content, type=EngineStats).step_moments
    except Exception as e:  # an older agentrt server, or one behind a proxy
        log.debug("no engine stats", url=target.base_url, error=repr(e))
    return snapshot


def server_counters(before: ServerSnapshot | None, after: ServerSnapshot | None) -> ServerCounters | None:
    if before is None or after is None:
        return None

    def delta(name: str) -> float:
        return after.metrics.get(name, 0.0) - before.metrics.get(name, 0.0)

    e2e = delta("agentrt:e2e_request_latency_seconds_sum")
    moments = None
    if before.step_moments is not None and after.step_moments is not None:
        moments = after.step_moments.minus(before.step_moments)
    return ServerCounters(
        step_moments=moments,
        preemptions=delta("agentrt:num_preemptions_total"),
        swaps=delta("agentrt:num_swaps_total"),
        recomputes=delta("agentrt:num_recomputes_total"),
        queue_time_share=delta("agentrt:request_queue_time_seconds_sum") / e2e if e2e > 0 else None,
        prefix_queries=delta("agentrt:prefix_cache_queries_total"),
        prefix_hits=delta("agentrt:prefix_cache_hits_total"),
        recomputed_prompt_tokens=delta("agentrt:recomputed_prompt_tokens_total"),
        kv_pins=delta("agentrt:num_kv_pins_total"),
        kv_pins_reused=delta("agentrt:num_kv_pins_reused_total"),
        kv_pins_expired=delta("agentrt:num_kv_pins_expired_total"),
        kv_pins_yielded=delta("agentrt:num_kv_pins_yielded_total"),
        kv_pins_held=delta("agentrt:num_kv_pins_held_total"),
        kv_contexts_lost=delta("agentrt:num_kv_contexts_lost_total"),
        kv_contexts_restored=delta("agentrt:num_kv_contexts_restored_total"),
        kv_admissions_held=delta("agentrt:num_kv_admissions_held_total"),
        kv_admissions_held_s=delta("agentrt:kv_admissions_held_seconds_total"),
    )


def make_llm(target: Target, cutoff: Cutoff | None = None) -> Any:
    """The agents' LLM endpoint on ``target`` (program headers added by the agentrt clients);
    with ``cutoff``, the synchronous client's calls go through it."""
    import openai

    import agentrt
    from agentrt.agents import LLM

    common: dict[str, Any] = {"base_url": target.base_url, "api_key": target.api_key, "timeout": 3600.0}
    if target.app is not None:
        common["app"] = target.app
    sync = dict(common)
    if cutoff is not None:
        sync["http_client"] = openai.DefaultHttpxClient(transport=cutoff)
    client, aclient = agentrt.OpenAI(**sync), agentrt.AsyncOpenAI(**common)
    if not target.model:
        target.model = client.models.list().data[0].id
    return LLM(model=target.model, client=client, aclient=aclient, extra_body=dict(target.extra_body))


async def warm_up(target: Target) -> None:
    """One short call before measuring, so lazy start-up work (first forward pass, caches) is not timed."""
    llm = make_llm(target)
    try:
        await llm.achat([{"role": "user", "content": "Say hello."}], max_tokens=4)
    finally:
        llm.client.close()
        await llm.aclient.close()


async def run_programs(
    target: Target,
    specs: Sequence[Any],
    arrivals: Sequence[float],
    *,
    rate: float,
    on_done: Callable[[ProgramResult], None] = lambda r: None,
    time_limit: float | None = None,
) -> tuple[RunSummary, list[ProgramResult]]:
    """Start ``specs[i]`` at ``arrivals[i]`` seconds, wait for all, and summarise the run.

    At ``time_limit`` the programs still running are cut: asyncio ones are
    cancelled, and those in worker threads (which cancellation cannot stop)
    have their calls in flight ended and every further call refused, so none
    of them outlives the run or reaches a server started after it.
    """
    from agentrt.agents import Trace

    cutoff = Cutoff() if target.app is None else None
    llm = make_llm(target, cutoff)
    before = await scrape(target)
    results: list[ProgramResult] = []
    t0 = time.monotonic()

    async def one(spec: Any, arrival: float) -> None:
        trace = Trace()
        start = time.monotonic()
        error: str | None = None
        try:
            await spec.run(llm.with_trace(trace))
        except Exception as e:  # a failed program is a result, not a crash of the benchmark
            error = f"{type(e).__name__}: {e}"[:500]
            log.warning("program failed", index=spec.index, workload=spec.workload, error=error)
        except anyio.get_cancelled_exc_class():
            error = CUT
            raise
        finally:
            end = time.monotonic()
            result = program_result(spec.index, spec.workload, arrival, start, end, trace, error)
            results.append(result)
            on_done(result)

    with anyio.move_on_after(math.inf if time_limit is None else time_limit):
        async with anyio.create_task_group() as tg:
            for spec, arrival in zip(specs, arrivals, strict=True):
                await anyio.sleep(max(0.0, t0 + arrival - time.monotonic()))
                tg.start_soon(one, spec, arrival)
    if cutoff is not None:
        cutoff.cut()
    started = {r.index for r in results}
    for spec, arrival in zip(specs, arrivals, strict=True):
        if spec.index not in started:
            results.append(program_result(spec.index, spec.workload, arrival, 0.0, 0.0, Trace(), NOT_STARTED))
    after = await scrape(target)
    llm.client.close()
    await llm.aclient.close()
    results.sort(key=lambda r: r.index)  # program order, not completion order
    return summarise(rate, results, server_counters(before, after)), results
