"""``agentrt bench serve`` and ``bench compare`` drive a real server with agent programs."""

from __future__ import annotations

import argparse
import json
import math
import re
from pathlib import Path

import pytest
from tests.unit.agents.live_server import echo_server

from agentrt.bench.compare import (
    agentrt_systems,
    compare,
    parse_external,
    parse_policies,
    parse_retention,
    serve_flag,
    system_schedulers,
)
from agentrt.bench.load import (
    ServerSnapshot,
    parse_prometheus,
    programs_for,
    server_counters,
    unit_arrivals,
)
from agentrt.bench.serve import load_result, parse_rates
from agentrt.cli import main
from agentrt.protocol.engine import StepMoments, StepRecord
from agentrt.scheduling import SchedulerConfig


def test_rates_parse_as_sweeps_or_lists() -> None:
    assert parse_rates("0.1:0.3:0.1") == [0.1, 0.2, 0.3]
    assert parse_rates("2,1,2") == [1.0, 2.0]
    for bad in ["0:1:0.5", "1:0:1", "a,b", "1:2", "-1"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_rates(bad)


def test_arrivals_are_seeded_and_scale_with_rate() -> None:
    assert unit_arrivals(5, 1) == unit_arrivals(5, 1) != unit_arrivals(5, 2)
    assert unit_arrivals(3, 0)[0] == 0.0
    # A duration admits the arrivals that fall inside it, at most --num-programs of them.
    inside = sum(1 for t in unit_arrivals(1000, 3) if t / 2.0 < 10.0)
    assert programs_for(10.0, None, 2.0, 3) == inside
    assert programs_for(10.0, 3, 2.0, 3) == min(3, inside)
    assert programs_for(None, 7, 2.0, 3) == 7


def test_server_counters_come_from_metric_deltas() -> None:
    text = (
        "# HELP agentrt:num_preemptions_total x\n"
        "agentrt:num_preemptions_total 5\n"
        'agentrt:request_success_total{finished_reason="stop"} 3\n'
        'agentrt:request_success_total{finished_reason="length"} 4\n'
        "agentrt:request_queue_time_seconds_sum 2.0\n"
        "agentrt:e2e_request_latency_seconds_sum 8.0\n"
    )
    after = parse_prometheus(text)
    assert after["agentrt:request_success_total"] == 7
    early = StepMoments.total([StepRecord(10, 2, 100, 0.5)])
    late = StepMoments.total([StepRecord(10, 2, 100, 0.5), StepRecord(0, 4, 400, 0.25)])
    before = ServerSnapshot(metrics={"agentrt:num_preemptions_total": 2.0}, step_moments=early)
    counters = server_counters(before, ServerSnapshot(metrics=after, step_moments=late))
    assert counters is not None and counters.preemptions == 3 and counters.queue_time_share == 0.25
    # Only the run's own step (4 decodes, 400 KV tokens, 0.25 s) is left in the difference.
    assert counters.step_moments is not None and counters.step_moments.steps == 1
    assert counters.step_moments.xy == [0.25, 0.0, 1.0, 100.0]
    assert server_counters(None, ServerSnapshot(metrics=after)) is None


def test_prefix_and_retention_counters_come_from_the_run_alone() -> None:
    from agentrt.bench.program_metrics import prefix_hit_rate

    before = ServerSnapshot(metrics={"agentrt:prefix_cache_queries_total": 100.0,
                                     "agentrt:prefix_cache_hits_total": 90.0})
    after = ServerSnapshot(metrics={
        "agentrt:prefix_cache_queries_total": 500.0, "agentrt:prefix_cache_hits_total": 390.0,
        "agentrt:recomputed_prompt_tokens_total": 64.0, "agentrt:num_kv_pins_total": 7.0,
        "agentrt:num_kv_pins_reused_total": 5.0, "agentrt:num_kv_pins_expired_total": 1.0,
        "agentrt:num_kv_pins_yielded_total": 1.0, "agentrt:num_kv_pins_held_total": 4.0,
        "agentrt:num_kv_admissions_held_total": 3.0, "agentrt:kv_admissions_held_seconds_total": 2.5,
    })
    counters = server_counters(before, after)
    assert counters is not None
    assert prefix_hit_rate(counters) == 300 / 400  # the warm-up's lookups are not counted
    assert (counters.recomputed_prompt_tokens, counters.kv_pins, counters.kv_pins_reused) == (64, 7, 5)
    assert (counters.kv_pins_expired, counters.kv_pins_yielded, counters.kv_pins_held) == (1, 1, 4)
    assert (counters.kv_admissions_held, counters.kv_admissions_held_s) == (3, 2.5)
    assert math.isnan(prefix_hit_rate(server_counters(before, before)))
    assert math.isnan(prefix_hit_rate(None))


def test_kv_retention_modes_make_one_server_per_policy_and_mode() -> None:
    assert parse_retention("off, ttl,off") == ["off", "ttl"]
    for bad in ["", "lru", "off,sometimes"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_retention(bad)
    args = argparse.Namespace(policies=["fcfs", "plas"], kv_retention=["off", "ttl"], serve_arg=["--max-num-seqs=4"])
    assert agentrt_systems(args) == [
        ("agentrt/fcfs+kv-off", "fcfs", ["--max-num-seqs=4", "--kv-retention", "off"]),
        ("agentrt/fcfs+kv-ttl", "fcfs", ["--max-num-seqs=4", "--kv-retention", "ttl"]),
        ("agentrt/plas+kv-off", "plas", ["--max-num-seqs=4", "--kv-retention", "off"]),
        ("agentrt/plas+kv-ttl", "plas", ["--max-num-seqs=4", "--kv-retention", "ttl"]),
    ]
    args.kv_retention = None
    assert [label for label, _, _ in agentrt_systems(args)] == ["agentrt/fcfs", "agentrt/plas"]
    assert main(["bench", "compare", "--policies", "", "--kv-retention", "off,ttl",
                 "--external", "x=http://127.0.0.1:9/v1"]) == 2  # retention of no agentrt server


def test_a_policy_entry_with_a_config_file_is_a_server_of_its_own(tmp_path: Path) -> None:
    tokens = tmp_path / "tokens.toml"
    tokens.write_text('[scheduler]\nservice_unit = "tokens"\nnum_queues = 3\n')
    assert parse_policies(f"plas, plas:{tokens}") == ["plas", f"plas:{tokens}"]
    for bad in ["plas:", "sjf:x.toml"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_policies(bad)
    args = argparse.Namespace(policies=["plas", f"plas:{tokens}"], kv_retention=["ttl"],
                              serve_arg=["--config=base.toml"], llama_front=[])
    assert agentrt_systems(args) == [
        ("agentrt/plas+kv-ttl", "plas", ["--config=base.toml", "--kv-retention", "ttl"]),
        ("agentrt/plas[tokens]+kv-ttl", "plas",
         ["--config=base.toml", "--config", str(tokens), "--kv-retention", "ttl"]),  # the last wins
    ]
    schedulers = system_schedulers(args)
    assert "agentrt/plas+kv-ttl" not in schedulers  # its label says it all
    scheduler = schedulers["agentrt/plas[tokens]+kv-ttl"]
    assert (scheduler.policy, scheduler.service_unit, scheduler.num_queues) == ("plas", "tokens", 3)


def test_external_systems_and_policies_parse() -> None:
    assert parse_external("vllm=http://h:8000/v1") == ("vllm", "http://h:8000/v1", "")
    assert parse_external("tf=http://h/v1#org/model") == ("tf", "http://h/v1", "org/model")
    assert parse_policies("fcfs, atlas") == ["fcfs", "atlas"] and parse_policies("") == []
    for bad in ["noequals", "x=ftp://h"]:
        with pytest.raises(argparse.ArgumentTypeError):
            parse_external(bad)
    with pytest.raises(argparse.ArgumentTypeError):
        parse_policies("fcfs,sjf")
    assert serve_flag(["--max-num-seqs=8"], "--max-num-seqs") == "8"
    assert serve_flag(["--model", "m", "--max-num-seqs", "4"], "--max-num-seqs") == "4"
    assert serve_flag(["--max-num-seqs-x=1"], "--max-num-seqs") is None


def test_bench_serve_sweeps_rates_and_writes_json_and_plot(tmp_path: Path, capsys) -> None:
    out, plot = tmp_path / "serve.json", tmp_path / "serve.png"
    with echo_server(token_delay=0.001) as (url, _engine):
        code = main(["bench", "serve", "--base-url", url, "--workload", "mixed", "--num-programs", "6",
                     "--rates", "5,10", "--seed", "3", "--json", str(out), "--plot", str(plot), "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    [system] = result["systems"]
    assert [r["rate"] for r in system["runs"]] == [5.0, 10.0]
    for run, programs in zip(system["runs"], system["programs"], strict=True):
        assert run["programs"] == run["completed"] == 6 and run["errors"] == 0
        assert run["calls"] > 6 and run["latency"]["p50"] > 0 and 0 < run["fairness"] <= 1
        assert run["server"] is not None  # an agentrt server: its /metrics was read
        assert sorted(p["workload"] for p in programs) == ["chat", "chat", "react", "react", "tree_search", "tree_search"]
    # The same seeded programs at every rate.
    first, second = ([p["workload"] for p in ps] for ps in system["programs"])
    assert first == second
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert "agent programs under Poisson load" in capsys.readouterr().out


def test_bench_serve_reports_failed_programs_and_exits_nonzero(tmp_path: Path) -> None:
    out = tmp_path / "fail.json"
    with echo_server(max_model_len=64) as (url, _engine):  # every react prompt is too long: 400s
        code = main(["bench", "serve", "--base-url", url, "--workload", "react", "--num-programs", "2",
                     "--rate", "20", "--json", str(out), "--no-progress"])
    assert code == 1
    [run] = json.loads(out.read_text())["systems"][0]["runs"]
    assert run["errors"] == 2 and run["completed"] == 0
    assert run["latency"]["mean"] is None  # nothing to measure: NaN, written as null
    assert math.isnan(load_result(str(out)).systems[0].runs[0].latency.mean)


def test_bench_compare_ratios_against_the_first_system(tmp_path: Path, capsys) -> None:
    out = tmp_path / "compare.json"
    with echo_server(token_delay=0.001) as (fast, _a), echo_server(token_delay=0.004) as (slow, _b):
        code = main(["bench", "compare", "--policies", "", "--external", f"fast={fast}", "--external", f"slow={slow}#echo",
                     "--workload", "map_reduce", "--num-programs", "3", "--rates", "5,10,20", "--json", str(out),
                     "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert [s["label"] for s in result["systems"]] == ["fast", "slow"]
    comparison = result["comparison"]
    assert comparison["baseline"] == "fast" and comparison["rows"][0]["ratio"] == 1.0
    assert comparison["metric"] == "latency" and result["token_comparison"]["metric"] == "token_latency"
    assert result["token_comparison"]["rows"][0]["ratio"] == 1.0
    # The systems take turns rate by rate: fast@5, slow@5, fast@10, slow@10, ...
    fast_runs, slow_runs = (s["runs"] for s in result["systems"])
    order = sorted([*fast_runs, *slow_runs], key=lambda r: r["started"])
    assert [r["rate"] for r in order] == [5, 5, 10, 10, 20, 20]
    assert all(f["started"] < s["started"] for f, s in zip(fast_runs, slow_runs, strict=True))
    printed = capsys.readouterr().out
    assert "throughput at equal mean program latency" in printed
    assert "throughput at equal mean program-level token latency" in printed


def test_compare_defaults_the_target_to_the_baselines_middle_rate() -> None:
    from agentrt.bench.program_metrics import Distribution, RunSummary
    from agentrt.bench.serve import SystemResult

    def system(label: str, latencies: list[float], token_latencies: list[float] | None = None) -> SystemResult:
        def dist(m: float) -> Distribution:
            return Distribution(mean=m, p50=m, p95=2 * m, p99=2 * m)

        runs = [RunSummary(rate=r, programs=1, completed=1, errors=0, makespan=1, throughput=1, token_throughput=1,
                           latency=dist(m), token_latency=dist(t) if token_latencies else Distribution(),
                           wait_share=0, ttft=Distribution(), itl=Distribution(), calls=1, prompt_tokens_per_call=1,
                           completion_tokens_per_call=1, fairness=1)
                for r, m, t in zip([0.1, 0.2, 0.3], latencies, token_latencies or latencies, strict=True)]
        return SystemResult(label=label, base_url="", model="", runs=runs, programs=[[], [], []])

    result = compare([system("fcfs", [10, 20, 60]), system("plas", [5, 8, 12]), system("bad", [30, 40, 50])], None)
    assert result.latency_target == 20
    fcfs, plas, bad = result.rows
    assert fcfs.ratio == 1.0 and fcfs.p95_at_baseline_rate == 40
    assert plas.ratio == pytest.approx(1.5) and plas.ratio_bound == ">="  # met the target at every rate
    assert bad.ratio is None and bad.rate_at_target.bound == "<"

    # The same curves on token latency: equal mean latencies, but the short programs of
    # "plas" wait less, so its token latency crosses the baseline's target later.
    systems = [system("fcfs", [10, 20, 60], [0.1, 0.4, 0.8]), system("plas", [10, 20, 60], [0.1, 0.2, 0.6])]
    assert compare(systems, None).rows[1].ratio == 1.0
    by_token = compare(systems, None, "token_latency")
    assert by_token.metric == "token_latency" and by_token.latency_target == 0.4
    assert by_token.rows[1].ratio == pytest.approx(0.25 / 0.2)  # 0.2 + 0.1 * (0.4 - 0.2) / (0.6 - 0.2)
    assert by_token.rows[1].p95_at_baseline_rate == 0.4


def test_an_in_process_app_is_driven_without_a_socket() -> None:
    import anyio

    import agentrt
    from agentrt.bench.load import Target
    from agentrt.bench.serve import sweep_target
    from agentrt.bench.serve_report import Progress
    from agentrt.sdk.openai_clients import IN_PROCESS_BASE_URL
    from agentrt.serving.inprocess import AppRunner
    from agentrt.testing.echo import EchoEngine

    engine = EchoEngine(token_delay=0.001)
    app = agentrt.serve_in_process(engine)
    target = Target(label="in-process", base_url=IN_PROCESS_BASE_URL, app=app)
    args = argparse.Namespace(rates=None, rate=8.0, num_programs=3, duration=None, seed=5, workload="map_reduce",
                              size="full", tool_policy="model", timeout=None)
    try:
        with Progress(enabled=False) as progress:
            system = anyio.run(sweep_target, target, args, progress)
    finally:
        AppRunner.for_app(app).close()
    [run] = system.runs
    assert run.completed == 3 and run.errors == 0 and run.calls == 3 * (1 + 4 + 1)
    assert run.server is not None  # /metrics read in-process too
    assert len({r.program.program_id for r in engine.requests if r.program is not None}) == 3
    assert sum(r.program is None for r in engine.requests) == 1  # the warm-up call, outside any program


def test_bench_compare_starts_one_agentrt_server_per_policy(tmp_path: Path, capsys) -> None:
    out = tmp_path / "policies.json"
    code = main(["bench", "compare", "--policies", "fcfs,plas", "--serve-arg=--engine-factory",
                 "--serve-arg=agentrt.testing.echo:EchoEngine", "--workload", "tree_search", "--size", "small",
                 "--num-programs", "2", "--rates", "4,8", "--startup-timeout", "120", "--json", str(out),
                 "--simulate", "a100-llama3-8b", "--no-progress"])
    assert code == 0
    result = json.loads(out.read_text())
    assert [s["label"] for s in result["systems"]] == ["agentrt/fcfs", "agentrt/plas"]
    assert all(run["server"] is not None and run["errors"] == 0 for s in result["systems"] for run in s["runs"])
    ports = {s["base_url"] for s in result["systems"]}
    assert len(ports) == 2  # each policy got its own server
    # ... a fresh one for each rate, so no rate finds the previous rate's prompts cached.
    captured = capsys.readouterr()
    assert captured.err.count("starting server") == 4
    assert [run["rate"] for run in result["systems"][0]["runs"]] == [4, 8]
    # The simulator replays the measured programs of every run, next to the measurement.
    predictions = result["predictions"]
    assert [(p["policy"], p["rate"]) for p in predictions] == [("fcfs", 4), ("fcfs", 8), ("plas", 4), ("plas", 8)]
    assert all(p["simulated"]["mean"] > 0 for p in predictions)
    assert predictions[0]["measured"] == result["systems"][0]["runs"][0]["latency"]
    assert "simulator (a100-llama3-8b) against measurement" in captured.out
    # A saved run can be reported again (e.g. with a newly fitted profile) without measuring.
    again = tmp_path / "again.json"
    assert main(["bench", "compare", "--from-json", str(out), "--simulate", "a100-llama3-8b",
                 "--json", str(again)]) == 0
    assert json.loads(again.read_text())["predictions"] == predictions


def test_measured_programs_replay_as_simulator_dags() -> None:
    from agentrt.bench.program_metrics import CallStats, ProgramResult
    from agentrt.bench.replay import sim_program

    def call(cid: str, parent: str | None, thread: str, start: float, end: float, prompt: int) -> CallStats:
        return CallStats(ttft=0.1, itl=0.01, prompt_tokens=prompt, completion_tokens=10, start=start, end=end,
                         thread_id=thread, call_id=cid, parent_call_id=parent)

    measured = ProgramResult(index=3, workload="map_reduce", arrival=2.5, latency=9.0, completion_tokens=40,
                             prompt_tokens=0, wait_share=0.0, tool_time=0.0, calls=[
                                 call("plan", None, "0", 0.0, 1.0, 50),
                                 call("b", "plan", "0.2", 1.2, 3.0, 30),
                                 call("a", "plan", "0.1", 1.1, 2.0, 30),
                                 call("reduce", "plan", "0", 3.5, 4.0, 120),
                             ])
    spec = sim_program(measured)
    assert spec.arrival == 2.5 and spec.kind == "map_reduce"
    plan, a, b, reduce = spec.calls
    assert (a.parents, b.parents, reduce.parents) == ((0,), (0,), (0,))
    assert a.delay == pytest.approx(0.1) and reduce.delay == pytest.approx(2.5)
    assert len({plan.thread, a.thread, b.thread}) == 3 and reduce.thread == plan.thread
    # The reduce call extends the plan call's prompt in the same thread: it shares that prefix.
    assert reduce.segments[0] == plan.segments[0] and reduce.prompt_tokens == 120
    assert a.segments[0][0] != plan.segments[0][0]


def test_bench_compare_reports_a_server_that_fails_to_start(capsys) -> None:
    code = main(["bench", "compare", "--policies", "fcfs", "--serve-arg=--engine-factory",
                 "--serve-arg=no.such.module:Engine", "--num-programs", "1", "--no-progress"])
    assert code == 2
    out = capsys.readouterr().out
    assert "agentrt serve (fcfs) exited with" in out
    kept = re.search(r"\(log: (\S+?)\)", out)
    assert kept is not None and Path(kept.group(1)).exists()  # kept for diagnosis
    Path(kept.group(1)).unlink()


@pytest.mark.slow
def test_bench_serve_embedded_runs_programs_on_the_default_model(tmp_path: Path) -> None:
    out = tmp_path / "embedded.json"
    code = main(["bench", "serve", "--embedded", "--scheduling-policy", "plas", "--workload", "map_reduce",
                 "--size", "small", "--num-programs", "2", "--rate", "1", "--json", str(out)])
    assert code == 0
    [system] = json.loads(out.read_text())["systems"]
    assert system["label"] == "embedded/plas" and system["model"].startswith("SmolLM2")
    [run] = system["runs"]
    assert run["completed"] == 2 and run["calls"] == 2 * (1 + 3 + 1)
    # ignore_eos is on by default: every call decodes exactly its max_tokens.
    assert run["completion_tokens_per_call"] == 32
    assert run["server"] is not None


def test_a_run_past_its_timeout_reports_the_unfinished_programs(tmp_path: Path) -> None:
    out = tmp_path / "timeout.json"
    with echo_server(token_delay=0.05) as (url, engine):
        code = main(["bench", "serve", "--base-url", url, "--workload", "map_reduce", "--num-programs", "4",
                     "--rate", "2", "--timeout", "0.8", "--json", str(out), "--no-progress"])
        aborted = list(engine.aborted)
    assert code == 1
    [programs] = json.loads(out.read_text())["systems"][0]["programs"]
    errors = sorted(p["error"] for p in programs)
    assert len(errors) == 4 and all(e and ("timed out" in e) for e in errors)
    assert any(e.startswith("cancelled") for e in errors) and any(e.startswith("not started") for e in errors)
    assert aborted  # the server saw the cancelled streams go away


def test_ctrl_c_stops_a_sweep_and_unwinds_it() -> None:
    import os
    import signal

    import anyio

    from agentrt.bench.serve import interruptible

    unwound = []

    async def sweep(seconds: float) -> str:
        try:
            await anyio.sleep(0.05)  # the signal receiver is in place by now
            os.kill(os.getpid(), signal.SIGINT)
            await anyio.sleep(seconds)
            return "finished"
        finally:
            unwound.append(True)

    async def quick() -> str:
        return "finished"

    assert anyio.run(interruptible, quick) == "finished"
    with pytest.raises(KeyboardInterrupt):
        anyio.run(interruptible, sweep, 60.0)
    assert unwound == [True]


def test_the_kv_table_and_the_replay_read_the_retention_systems() -> None:
    from rich.console import Console

    from agentrt.bench.program_metrics import (
        CallStats,
        Distribution,
        ProgramResult,
        RunSummary,
        ServerCounters,
    )
    from agentrt.bench.replay import predict
    from agentrt.bench.serve import SystemResult
    from agentrt.bench.serve_report import print_kv
    from agentrt.sim.profile import load_profile

    def system(label: str, hits: float) -> SystemResult:
        run = RunSummary(rate=0.5, programs=1, completed=1, errors=0, makespan=1, throughput=1, token_throughput=1,
                         latency=Distribution(mean=3.0, p50=3.0, p95=4.0, p99=4.0), token_latency=Distribution(),
                         wait_share=0, ttft=Distribution(), itl=Distribution(), calls=2, prompt_tokens_per_call=1,
                         completion_tokens_per_call=1, fairness=1,
                         server=ServerCounters(prefix_queries=200, prefix_hits=hits, kv_pins=2,
                                               kv_admissions_held=3, kv_admissions_held_s=4.5))
        calls = [CallStats(ttft=0.1, itl=0.01, prompt_tokens=100, completion_tokens=8, start=0.0, end=1.0,
                           thread_id="0", call_id="a"),
                 CallStats(ttft=0.1, itl=0.01, prompt_tokens=120, completion_tokens=8, start=2.0, end=3.0,
                           thread_id="0", call_id="b", parent_call_id="a")]
        program = ProgramResult(index=0, workload="react", arrival=0.0, latency=3.0, completion_tokens=16,
                                prompt_tokens=220, wait_share=0.0, tool_time=1.0, calls=calls)
        return SystemResult(label=label, base_url="", model="", runs=[run], programs=[[program]])

    systems = [system("agentrt/fcfs+kv-off", 50), system("agentrt/fcfs+kv-ttl", 150), system("vllm", 0)]
    console = Console(record=True, width=200)
    print_kv(console, systems)
    text = console.export_text()
    assert "25.0%" in text and "75.0%" in text and "vllm" in text  # vllm: 0 of 200 tokens hit
    assert "held back" in text and "4.5" in text
    predictions = predict(systems, load_profile("a100-llama3-8b"))
    assert [(p.label, p.policy) for p in predictions] == [
        ("agentrt/fcfs+kv-off", "fcfs"), ("agentrt/fcfs+kv-ttl", "fcfs")]
    # A server run with a config file is simulated with the scheduler given for its label, and
    # left out when none is (its label does not say the config).
    systems = [system("agentrt/plas[t]+kv-ttl", 150), system("agentrt/plas[u]+kv-ttl", 150)]
    given = {"agentrt/plas[t]+kv-ttl": SchedulerConfig(policy="gittins")}
    predictions = predict(systems, load_profile("a100-llama3-8b"), None, given)
    assert [(p.label, p.policy) for p in predictions] == [("agentrt/plas[t]+kv-ttl", "gittins")]
