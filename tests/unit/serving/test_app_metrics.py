"""/metrics: vLLM's metric names under the agentrt: prefix, plus program-level ones, with real values."""

from __future__ import annotations

import re

from tests.unit.serving.inprocess_clients import raw_client, serving, sync_client

from agentrt.protocol.engine import EngineStats
from agentrt.testing.echo import EchoEngine

NAMES = [
    "agentrt:time_to_first_token_seconds",
    "agentrt:e2e_request_latency_seconds",
    "agentrt:inter_token_latency_seconds",
    "agentrt:request_queue_time_seconds",
    "agentrt:num_requests_running",
    "agentrt:num_requests_waiting",
    "agentrt:num_requests_swapped",
    "agentrt:kv_cache_usage_perc",
    "agentrt:prefix_cache_hit_rate",
    "agentrt:prefix_cache_queries_total",
    "agentrt:prefix_cache_hits_total",
    "agentrt:prompt_tokens_total",
    "agentrt:generation_tokens_total",
    "agentrt:request_success_total",
    "agentrt:num_preemptions_total",
    "agentrt:num_swaps_total",
    "agentrt:num_recomputes_total",
    "agentrt:calls_per_queue_level",
    "agentrt:kv_cache_pinned_blocks",
    "agentrt:num_kv_pins_total",
    "agentrt:num_kv_pins_reused_total",
    "agentrt:num_kv_pins_expired_total",
    "agentrt:num_kv_pins_yielded_total",
    "agentrt:num_kv_pins_held_total",
    "agentrt:num_kv_contexts_lost_total",
    "agentrt:num_kv_contexts_offloaded_total",
    "agentrt:num_kv_contexts_restored_total",
    "agentrt:num_kv_admissions_held_total",
    "agentrt:kv_admissions_held_seconds_total",
    "agentrt:recomputed_prompt_tokens_total",
    "agentrt:program_e2e_latency_seconds",
    "agentrt:program_attained_service_seconds",
    "agentrt:program_wait_seconds",
    "agentrt:num_programs_active",
]


class BusyEngine(EchoEngine):
    """An echo engine that reports a scheduler's state, as the embedded engine does."""

    def stats(self) -> EngineStats:
        base = super().stats()
        base.waiting = 3
        base.swapped = 1
        base.preemptions_swap = 4
        base.preemptions_recompute = 2
        base.calls_per_level = [5, 2, 0, 1]
        base.kv_pinned_blocks = 12
        base.kv_pins = 9
        base.kv_pins_reused = 7
        base.kv_pins_expired = 1
        base.kv_pins_yielded = 1
        base.kv_contexts_lost = 4
        base.kv_contexts_offloaded = 3
        base.kv_contexts_restored = 2
        base.kv_admissions_held = 5
        base.kv_admissions_held_seconds = 7.5
        base.recomputed_prompt_tokens = 320
        return base


def value(text: str, sample: str) -> float:
    match = re.search(rf"^{re.escape(sample)} (\S+)$", text, re.MULTILINE)
    assert match is not None, f"{sample} not in /metrics"
    return float(match.group(1))


def test_metrics_expose_the_documented_names_in_prometheus_text() -> None:
    with serving() as (app, _):
        response = raw_client(app).get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    for name in NAMES:
        types = (f"# TYPE {name} ", f"# TYPE {name.removesuffix('_total')} ")
        assert any(t in response.text for t in types), name


def test_requests_update_the_token_counters_and_latency_histograms() -> None:
    with serving(EchoEngine()) as (app, _):
        client = sync_client(app)
        client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "a b c"}]
        )
        list(
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "d e"}], stream=True
            )
        )
        text = raw_client(app).get("/metrics").text
    assert value(text, "agentrt:generation_tokens_total") == 5
    assert value(text, "agentrt:prompt_tokens_total") > 0
    assert value(text, "agentrt:e2e_request_latency_seconds_count") == 2
    assert value(text, "agentrt:time_to_first_token_seconds_count") == 2
    assert value(text, "agentrt:inter_token_latency_seconds_count") == 3  # 2 gaps + 1 gap
    assert value(text, 'agentrt:request_success_total{finished_reason="stop"}') == 2


def test_engine_state_is_read_at_scrape_time() -> None:
    with serving(BusyEngine(), max_concurrent_requests=4) as (app, _):
        text = raw_client(app).get("/metrics").text
    assert value(text, "agentrt:num_requests_waiting") == 3
    assert value(text, "agentrt:num_requests_swapped") == 1
    assert value(text, "agentrt:num_preemptions_total") == 6
    assert value(text, "agentrt:num_swaps_total") == 4
    assert value(text, "agentrt:num_recomputes_total") == 2
    assert value(text, 'agentrt:calls_per_queue_level{level="0"}') == 5
    assert value(text, 'agentrt:calls_per_queue_level{level="3"}') == 1
    assert value(text, "agentrt:kv_cache_pinned_blocks") == 12
    assert value(text, "agentrt:num_kv_pins_total") == 9
    assert value(text, "agentrt:num_kv_pins_reused_total") == 7
    assert value(text, "agentrt:num_kv_pins_expired_total") == 1
    assert value(text, "agentrt:num_kv_pins_yielded_total") == 1
    assert value(text, "agentrt:num_kv_contexts_lost_total") == 4
    assert value(text, "agentrt:num_kv_contexts_offloaded_total") == 3
    assert value(text, "agentrt:num_kv_contexts_restored_total") == 2
    assert value(text, "agentrt:num_kv_admissions_held_total") == 5
    assert value(text, "agentrt:kv_admissions_held_seconds_total") == 7.5
    assert value(text, "agentrt:recomputed_prompt_tokens_total") == 320


def test_two_apps_have_separate_registries() -> None:
    with serving() as (first, _), serving() as (second, _):
        sync_client(first).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "x y"}]
        )
        text = raw_client(second).get("/metrics").text
    assert value(text, "agentrt:generation_tokens_total") == 0
