"""Prometheus metrics of one server, under vLLM's names with the ``agentrt:`` prefix.

Where vLLM has a metric with the same meaning, the name is vLLM's, so
dashboards built for vLLM work after changing the prefix. Per-request
histograms and token counters are observed by the app as calls finish;
engine load (running, waiting, KV usage, preemptions, swaps, recomputes,
calls per queue level) is read from ``EngineClient.stats()`` at scrape time,
so it is always current and costs nothing between scrapes. Program-level
metrics (latency, attained service) are observed when a program ends.

Each app has its own :class:`CollectorRegistry`, so several apps (tests,
in-process mode next to a server) never collide.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from agentrt.protocol.engine import EngineStats, Timings, Usage

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# The *_created series double the exposition for no use here (vLLM turns them off too).
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    20,
    40,
    80,
    160,
    320,
    640,
)
_TOKEN_GAP_BUCKETS = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.075,
    0.1,
    0.15,
    0.2,
    0.3,
    0.5,
    0.75,
    1,
    2.5,
    5,
)
_PROGRAM_BUCKETS = (0.1, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1200, 3600)


class EngineStatsCollector(Collector):
    """Gauges and counters read from the engine's stats snapshot at scrape time."""

    def __init__(self, stats: Callable[[], EngineStats], server_queue: Callable[[], int]) -> None:
        self._stats = stats
        self._server_queue = server_queue

    def collect(self) -> Iterator[Metric]:
        s = self._stats()
        yield _gauge(
            "agentrt:num_requests_running", "Calls the engine is running (in the batch).", s.running
        )
        yield _gauge(
            "agentrt:num_requests_waiting",
            "Calls waiting in the engine's queues plus requests waiting at the server for a slot.",
            s.waiting + self._server_queue(),
        )
        yield _gauge(
            "agentrt:num_requests_swapped",
            "Preempted calls whose KV sits in the host pool.",
            s.swapped,
        )
        yield _gauge(
            "agentrt:kv_cache_usage_perc", "Fraction of the KV pool in use (0..1).", s.kv_usage
        )
        yield _gauge("agentrt:kv_cache_blocks_used", "KV blocks in use.", s.kv_blocks_used)
        yield _gauge("agentrt:kv_cache_blocks_total", "KV blocks in the pool.", s.kv_blocks_total)
        yield _gauge(
            "agentrt:prefix_cache_hit_rate",
            "Prompt tokens served from the prefix cache (0..1).",
            s.prefix_hit_rate,
        )
        yield _counter(
            "agentrt:prefix_cache_queries",
            "Prompt tokens looked up in the prefix cache.",
            s.prefix_queried_tokens,
        )
        yield _counter(
            "agentrt:prefix_cache_hits",
            "Prompt tokens found in the prefix cache.",
            s.prefix_hit_tokens,
        )
        yield _counter(
            "agentrt:num_preemptions",
            "Calls preempted (swap or recompute).",
            s.preemptions_swap + s.preemptions_recompute,
        )
        yield _counter(
            "agentrt:num_swaps",
            "Preemptions that swapped the KV to host memory.",
            s.preemptions_swap,
        )
        yield _counter(
            "agentrt:num_recomputes",
            "Preemptions that dropped the KV to recompute it.",
            s.preemptions_recompute,
        )
        yield _gauge(
            "agentrt:kv_cache_pinned_blocks",
            "Cached KV blocks pinned to programs waiting on a tool (see [engine.retention]).",
            s.kv_pinned_blocks,
        )
        yield _counter("agentrt:num_kv_pins", "Contexts pinned after a call.", s.kv_pins)
        yield _counter(
            "agentrt:num_kv_pins_reused",
            "Pins whose program called again before the pin's time-to-live ran out.",
            s.kv_pins_reused,
        )
        yield _counter(
            "agentrt:num_kv_pins_expired",
            "Pins whose time-to-live ran out before their program called again.",
            s.kv_pins_expired,
        )
        yield _counter(
            "agentrt:num_kv_pins_yielded",
            "Pins evicted because running calls needed the blocks.",
            s.kv_pins_yielded,
        )
        yield _counter(
            "agentrt:num_kv_pins_held",
            "Pins held while the client said their program's tool was running.",
            s.kv_pins_held,
        )
        yield _counter(
            "agentrt:num_kv_contexts_lost",
            "Contexts evicted while their program may call again (pins yielded, expired, "
            "displaced; unpinned contexts of live programs).",
            s.kv_contexts_lost,
        )
        yield _counter(
            "agentrt:num_kv_contexts_offloaded",
            "Lost contexts copied to the host pool.",
            s.kv_contexts_offloaded,
        )
        yield _counter(
            "agentrt:num_kv_contexts_restored",
            "Host copies of lost contexts brought back for their program's next call.",
            s.kv_contexts_restored,
        )
        yield _counter(
            "agentrt:num_kv_admissions_held",
            "Calls pinned KV held back from admission for its program's next call.",
            s.kv_admissions_held,
        )
        yield _counter(
            "agentrt:kv_admissions_held_seconds",
            "Seconds from each held-back call's first hold to its admission.",
            s.kv_admissions_held_seconds,
        )
        yield _counter(
            "agentrt:recomputed_prompt_tokens",
            "Prompt tokens computed again after their KV was evicted or dropped.",
            s.recomputed_prompt_tokens,
        )
        levels = GaugeMetricFamily(
            "agentrt:calls_per_queue_level",
            "Live calls in each queue level of the scheduler (0 = top).",
            labels=["level"],
        )
        for level, count in enumerate(s.calls_per_level):
            levels.add_metric([str(level)], count)
        yield levels


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


class ServerMetrics:
    """The registry of one app and the observations it makes."""

    def __init__(
        self,
        stats: Callable[[], EngineStats],
        server_queue: Callable[[], int],
        active_programs: Callable[[], int],
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.ttft = Histogram(
            "agentrt:time_to_first_token_seconds",
            "Time to first token.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.e2e = Histogram(
            "agentrt:e2e_request_latency_seconds",
            "End-to-end request latency.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.itl = Histogram(
            "agentrt:inter_token_latency_seconds",
            "Time between streamed tokens.",
            buckets=_TOKEN_GAP_BUCKETS,
            registry=r,
        )
        self.queue_time = Histogram(
            "agentrt:request_queue_time_seconds",
            "Time a call spent waiting (incl. while preempted).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_time = Histogram(
            "agentrt:request_model_time_seconds",
            "Model-executor time of a call (its attained service).",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.prompt_tokens = Counter(
            "agentrt:prompt_tokens", "Prompt tokens processed.", registry=r
        )
        self.generation_tokens = Counter(
            "agentrt:generation_tokens", "Tokens generated.", registry=r
        )
        self.success = Counter(
            "agentrt:request_success",
            "Finished requests by finish reason.",
            ["finished_reason"],
            registry=r,
        )
        self.failures = Counter(
            "agentrt:request_failure",
            "Requests answered with an error, by status.",
            ["status"],
            registry=r,
        )
        self.program_latency = Histogram(
            "agentrt:program_e2e_latency_seconds",
            "Program latency, from start to end.",
            buckets=_PROGRAM_BUCKETS,
            registry=r,
        )
        self.program_service = Histogram(
            "agentrt:program_attained_service_seconds",
            "Model time a program attained over its life.",
            buckets=_PROGRAM_BUCKETS,
            registry=r,
        )
        self.program_wait = Histogram(
            "agentrt:program_wait_seconds",
            "Time a program's calls spent waiting over its life.",
            buckets=_PROGRAM_BUCKETS,
            registry=r,
        )
        self.program_calls = Histogram(
            "agentrt:program_calls",
            "LLM calls a program made.",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 1024),
            registry=r,
        )
        programs = Gauge(
            "agentrt:num_programs_active", "Programs started and not yet ended.", registry=r
        )
        programs.set_function(active_programs)
        r.register(EngineStatsCollector(stats, server_queue))

    def observe_call(
        self, usage: Usage | None, timings: Timings | None, finish_reason: str | None
    ) -> None:
        """Record one finished call (its usage and the engine's timings)."""
        if usage is not None:
            self.prompt_tokens.inc(usage.prompt_tokens)
            self.generation_tokens.inc(usage.completion_tokens)
        if timings is not None:
            self.queue_time.observe(timings.queue_time)
            self.model_time.observe(timings.model_time)
        self.success.labels(finished_reason=finish_reason or "abort").inc()

    def observe_program(self, latency: float, service: float, wait: float, calls: int) -> None:
        self.program_latency.observe(latency)
        self.program_service.observe(service)
        self.program_wait.observe(wait)
        self.program_calls.observe(calls)

    def exposition(self) -> bytes:
        return generate_latest(self.registry)
