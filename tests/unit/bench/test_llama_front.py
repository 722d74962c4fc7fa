"""``bench compare --llama-front``: llama.cpp alone against agentrt in front of a fresh one, with the
engine's own queue sampled; against the stand-in binary (a first-come-first-served echo server)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest
from tests.unit.bench.llama_fakes import fake_llama_binary, flag, starts, write_gguf

from agentrt.bench.compare import Front, parse_fronts, system_schedulers
from agentrt.bench.engine_queue import Sample, parse_metrics
from agentrt.bench.replay import predict
from agentrt.bench.serve import load_result
from agentrt.cli import main
from agentrt.scheduling import SchedulerConfig
from agentrt.sim.profile import load_profile


def test_the_engines_counts_are_read_from_its_metrics() -> None:
    text = "# HELP llamacpp:requests_processing x\nllamacpp:requests_processing 4\nllamacpp:requests_deferred 2\n"
    assert parse_metrics(text) == Sample(4.0, 2.0)
    assert parse_metrics(text + "llamacpp:prompt_tokens_total 120\n") == Sample(4.0, 2.0, 120.0)
    assert parse_metrics("llamacpp:requests_processing 4\n") is None
    assert parse_metrics("llamacpp:requests_processing four\nllamacpp:requests_deferred 0") is None


def test_compare_puts_agentrt_in_front_of_its_own_fresh_llama_server(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_llama_binary(tmp_path, monkeypatch)
    out = tmp_path / "compare.json"
    model = write_gguf(tmp_path / "m.gguf", tied=True)
    strict_toml = tmp_path / "strict.toml"
    strict_toml.write_text("[scheduler]\nnum_queues = 1\n")
    code = main([
        "bench", "compare", "--policies", "", "--llama-server", str(binary),
        "--llama-front", f"plas,fcfs@0:{strict_toml}", "--llama-model", str(model), "--llama-threads", "1",
        "--llama-slots", "2",
        "--workload", "chat", "--num-programs", "3", "--rate", "20", "--json", str(out),
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    alone, front, strict = json.loads(out.read_text())["systems"]
    labels = (alone["label"], front["label"], strict["label"])
    assert labels == ("llama.cpp", "agentrt/plas+llama.cpp", "agentrt/fcfs@0[strict]+llama.cpp")
    for system in (alone, front, strict):
        [run] = system["runs"]
        assert (run["completed"], run["errors"]) == (3, 0)
        queue = run["engine_queue"]
        assert queue["samples"] >= 1 and queue["processing_mean"] <= 2
        assert queue["prompt_tokens"] > 0  # the engine's count of prompt tokens, over the run
    # Three fresh servers, each with --metrics; agentrt keeps at most its calls queued ahead there.
    assert len(starts(tmp_path)) == 3
    assert all("--metrics" in argv and flag(argv, "--parallel") == "2" for argv in starts(tmp_path))
    assert front["runs"][0]["engine_queue"]["deferred_max"] <= 1
    assert strict["runs"][0]["engine_queue"]["deferred_max"] == 0


def test_both_orders_runs_each_rate_again_with_the_systems_reversed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    binary = fake_llama_binary(tmp_path, monkeypatch)
    out = tmp_path / "compare.json"
    model = write_gguf(tmp_path / "m.gguf", tied=True)
    code = main([
        "bench", "compare", "--policies", "", "--llama-server", str(binary), "--llama-front", "fcfs@0",
        "--llama-model", str(model), "--llama-threads", "1", "--llama-slots", "2", "--both-orders",
        "--workload", "chat", "--num-programs", "2", "--rate", "20", "--json", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    alone, front = json.loads(out.read_text())["systems"]
    assert [r["rate"] for r in alone["runs"]] == [r["rate"] for r in front["runs"]] == [20, 20]
    assert alone["runs"][0]["started"] < front["runs"][0]["started"]
    assert front["runs"][1]["started"] < alone["runs"][1]["started"]
    assert len(starts(tmp_path)) == 4  # fresh servers for each turn


def test_a_front_that_saves_slots_gets_a_server_with_a_save_path_and_restores_contexts_there(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """One slot, three programs of three turns: each turn after another program's takes the slot
    back, so the front saves the program that held it and restores the one it serves."""
    binary = fake_llama_binary(tmp_path, monkeypatch)
    monkeypatch.setenv("FAKE_LLAMA_TOKEN_DELAY", "0.003")
    out = tmp_path / "compare.json"
    model = write_gguf(tmp_path / "m.gguf", tied=True)
    code = main([
        "bench", "compare", "--policies", "", "--llama-server", str(binary), "--llama-front", "fcfs+slot-save",
        "--llama-model", str(model), "--llama-threads", "1", "--llama-slots", "1",
        "--workload", "chat", "--size", "small", "--num-programs", "3", "--rate", "50", "--json", str(out),
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    _, front = json.loads(out.read_text())["systems"]
    assert front["label"] == "agentrt/fcfs+slot-save+llama.cpp"
    [run] = front["runs"]
    assert (run["completed"], run["errors"]) == (3, 0)
    counters = run["server"]
    assert counters["kv_contexts_lost"] >= 1 and 1 <= counters["kv_contexts_restored"] <= counters["kv_contexts_lost"]
    assert "prefix cache and KV retention" in capsys.readouterr().out  # the saves are reported
    plain, saving = starts(tmp_path)
    assert "--slot-save-path" not in plain and Path(flag(saving, "--slot-save-path")).name.startswith("llama-slots-")


def test_a_front_needs_the_llama_server_it_stands_in_front_of(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code = main([
        "bench", "compare", "--policies", "", "--external", "x=http://127.0.0.1:9/v1", "--llama-front", "plas",
        "--workload", "chat", "--num-programs", "1", "--rate", "5", "--no-progress",
    ])  # fmt: skip
    assert code == 2
    assert "--llama-front" in capsys.readouterr().out


def test_a_fronts_config_file_is_the_one_its_server_runs_with(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = fake_llama_binary(tmp_path, monkeypatch)
    model = write_gguf(tmp_path / "m.gguf", tied=True)
    wrong = tmp_path / "wrong.toml"
    wrong.write_text("[scheduler]\nnum_queues = 0\n")
    code = main([
        "bench", "compare", "--policies", "", "--llama-server", str(binary), "--llama-front", f"plas:{wrong}",
        "--llama-model", str(model), "--llama-threads", "1", "--llama-slots", "2",
        "--workload", "chat", "--num-programs", "1", "--rate", "20", "--no-progress",
    ])  # fmt: skip
    assert code != 0
    assert "num_queues must be >= 1" in capsys.readouterr().out


def test_front_entries_name_a_policy_and_optionally_the_calls_queued_ahead_and_a_config() -> None:
    fronts = parse_fronts("plas, atlas@2,fcfs@0,plas@1:one.toml,atlas:d/x.toml,plas+slot-save,gittins@0+slot-save:o.toml")
    assert fronts == [
        Front("plas"),
        Front("atlas", 2),
        Front("fcfs", 0),
        Front("plas", 1, "one.toml"),
        Front("atlas", None, "d/x.toml"),
        Front("plas", slot_save=True),
        Front("gittins", 0, "o.toml", slot_save=True),
    ]
    assert [f.label for f in fronts[-2:]] == ["agentrt/plas+slot-save+llama.cpp", "agentrt/gittins@0+slot-save[o]+llama.cpp"]
    assert fronts[-1].backend_spec("http://h:1") == "llamacpp+http://h:1,queue_ahead=0,slot_save=1"
    assert fronts[3].backend_spec("http://h:1") == "llamacpp+http://h:1,queue_ahead=1"
    for bad in ("plas@", "plas@-1", "nope@1", "plas:", "plas@x:one.toml", "plas+save", "plas@1+slot-save"):
        with pytest.raises(argparse.ArgumentTypeError):
            parse_fronts(bad)


ECHO_PROFILE = """name = "echo"
step_overhead_s = 0.001
prefill_token_s = 0.0
decode_seq_s = 0.0
kv_token_s = 0.0
kv_blocks = 100000
max_batch_tokens = 100000
max_model_len = 100000
host_blocks = 100000
"""


def test_the_simulator_predicts_the_server_alone_and_each_front_with_its_own_scheduler(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    binary = fake_llama_binary(tmp_path, monkeypatch)
    out = tmp_path / "compare.json"
    model = write_gguf(tmp_path / "m.gguf", tied=True)
    profile = tmp_path / "echo.toml"
    profile.write_text(ECHO_PROFILE)
    one = tmp_path / "one.toml"
    one.write_text("[scheduler]\nnum_queues = 1\n")
    code = main([
        "bench", "compare", "--policies", "", "--llama-server", str(binary), "--llama-front", f"plas@1:{one}",
        "--llama-model", str(model), "--llama-threads", "1", "--llama-slots", "2", "--simulate", str(profile),
        "--workload", "chat", "--num-programs", "3", "--rate", "20", "--json", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    predictions = json.loads(out.read_text())["predictions"]
    assert [(p["label"], p["policy"]) for p in predictions] == [
        ("llama.cpp", "fcfs"),
        ("agentrt/plas@1[one]+llama.cpp", "plas"),
    ]
    assert all(0 < p["simulated"]["p50"] <= p["simulated"]["mean"] * 3 for p in predictions)
    # The tables print labels as they are: "[one]" is not taken for a style.
    assert "[one]" in capsys.readouterr().out
    # A saved run is predicted again with its fronts named; the same programs give the same figures.
    again = tmp_path / "again.json"
    code = main([
        "bench", "compare", "--from-json", str(out), "--llama-front", f"plas@1:{one}", "--llama-slots", "2",
        "--simulate", str(profile), "--json", str(again),
    ])  # fmt: skip
    assert code == 0
    assert json.loads(again.read_text())["predictions"] == predictions
    # The server's slots are the simulated engine's: one slot serves the three programs' calls
    # one at a time, where two serve two at once.
    systems = load_result(str(out)).systems
    alone = {"llama.cpp": SchedulerConfig(policy="fcfs")}
    [serial] = predict(systems, load_profile(profile), None, alone, 1)
    [parallel] = predict(systems, load_profile(profile), None, alone, 2)
    assert serial.simulated.mean > parallel.simulated.mean


def test_a_front_is_simulated_with_its_policy_and_its_configs_scheduler_table(
    tmp_path: Path,
) -> None:
    one = tmp_path / "one.toml"
    one.write_text('[scheduler]\nnum_queues = 1\nlevel_order = "program"\n')
    fronts = [Front("plas", 1, str(one)), Front("atlas")]
    args = argparse.Namespace(policies=[], kv_retention=None, llama_front=fronts)
    schedulers = system_schedulers(args)
    assert schedulers["llama.cpp"].policy == "fcfs"
    front = schedulers["agentrt/plas@1[one]+llama.cpp"]
    assert (front.policy, front.num_queues, front.level_order) == ("plas", 1, "program")
    assert schedulers["agentrt/atlas+llama.cpp"] == SchedulerConfig(policy="atlas")
    fronts = [Front("plas", None, str(tmp_path / "missing.toml"))]
    args = argparse.Namespace(policies=[], kv_retention=None, llama_front=fronts)
    with pytest.raises(ValueError, match=r"missing\.toml"):
        system_schedulers(args)


def test_the_relay_benchmark_counts_every_token(tmp_path: Path) -> None:
    out = tmp_path / "relay.json"
    code = main(["bench", "relay", "--tokens", "20", "--calls", "3", "--concurrency", "2",
                 "--repeats", "1", "--json", str(out)])  # fmt: skip
    assert code == 0
    rows = json.loads(out.read_text())["rows"]
    assert [r["layer"] for r in rows] == ["httpx", "backend", "router"]
    assert all(r["cpu_us_per_token"] > 0 for r in rows)
