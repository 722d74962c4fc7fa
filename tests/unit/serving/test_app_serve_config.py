"""``agentrt serve`` configuration: flags over ``[server]`` of a TOML file, the example config, sizes."""

from __future__ import annotations

from pathlib import Path

import pytest

from agentrt.cli import build_parser, main
from agentrt.config import ConfigError
from agentrt.serving.cli import server_config
from agentrt.serving.engines import engine_config, parse_memory, remote_tables, scheduler_config

EXAMPLE = Path(__file__).parents[3] / "server" / "agentrt.toml"


def parse(*argv: str) -> object:
    return build_parser().parse_args(["serve", *argv])


def test_no_arguments_serve_the_default_model_on_localhost_8000() -> None:
    config = server_config(parse())  # type: ignore[arg-type]
    assert (config.host, config.port, config.model) == ("127.0.0.1", 8000, None)
    assert config.scheduling_policy == "atlas"
    assert config.api_keys == [] and config.backends == []


def test_every_documented_flag_lands_in_the_config() -> None:
    args = parse(
        "--model",
        "/m",
        "--host",
        "0.0.0.0",
        "--port",
        "9000",
        "--scheduling-policy",
        "plas",
        "--max-num-seqs",
        "8",
        "--kv-cache-memory",
        "2GiB",
        "--replicas",
        "3",
        "--backend",
        "http://a:1",
        "--backend",
        "sglang+http://b:2",
        "--ray-address",
        "auto",
        "--api-key",
        "k1",
        "--api-key",
        "k2",
        "--api-key-file",
        "/keys.toml",
    )
    c = server_config(args)  # type: ignore[arg-type]
    assert (c.model, c.host, c.port, c.scheduling_policy, c.max_num_seqs) == (
        "/m",
        "0.0.0.0",
        9000,
        "plas",
        8,
    )
    assert (c.kv_cache_memory, c.replicas, c.ray_address) == ("2GiB", 3, "auto")
    assert c.backends == ["http://a:1", "sglang+http://b:2"]
    assert c.api_keys == ["k1", "k2"] and c.api_key_file == "/keys.toml"


def test_flags_override_the_file(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[server]\nport = 7000\nscheduling_policy = "fcfs"\nmax_queued_requests = 3\n')
    c = server_config(parse("--config", str(toml), "--port", "7001"))  # type: ignore[arg-type]
    assert (c.port, c.scheduling_policy, c.max_queued_requests) == (7001, "fcfs", 3)


def test_the_example_config_loads_into_every_component() -> None:
    server = server_config(parse("--config", str(EXAMPLE)))  # type: ignore[arg-type]
    engine = engine_config(server, EXAMPLE)
    assert server.api_keys == ["sk-change-me"]
    assert engine.kv_cache_memory == 512 * 1024**2
    assert engine.max_num_seqs == 32
    assert engine.scheduler.policy == server.scheduling_policy == "atlas"
    assert remote_tables(EXAMPLE) == []


def test_the_policy_flag_wins_over_the_scheduler_table(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[scheduler]\npolicy = "mlfq"\nnum_queues = 4\n')
    server = server_config(parse("--config", str(toml), "--scheduling-policy", "plas"))  # type: ignore[arg-type]
    sched = scheduler_config(server, toml)
    assert (sched.policy, sched.num_queues) == ("plas", 4)


def test_remote_tables_describe_remote_engines(tmp_path: Path) -> None:
    toml = tmp_path / "r.toml"
    toml.write_text('[[remote]]\nurl = "http://gpu1:30000"\nkind = "sglang"\n')
    (remote,) = remote_tables(toml)
    assert (remote.url, remote.kind) == ("http://gpu1:30000", "sglang")
    toml.write_text('[[remote]]\nkind = "sglang"\n')
    with pytest.raises(ConfigError, match="remote"):
        remote_tables(toml)


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("2GiB", 2 * 1024**3),
        ("512MB", 512e6),
        ("512 mib", 512 * 1024**2),
        ("1000", 1000.0),
        ("0.3", 0.3),
    ],
)
def test_memory_sizes(text: str, value: float) -> None:
    assert parse_memory(text) == value


def test_a_bad_size_or_a_bad_config_is_refused_with_exit_code_2(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not a size"):
        parse_memory("lots")
    toml = tmp_path / "bad.toml"
    toml.write_text('[server]\nport = "eighty"\n')
    assert main(["serve", "--config", str(toml)]) == 2
    toml.write_text("[server]\nno_such_option = 1\n")
    assert main(["serve", "--config", str(toml)]) == 2


def test_dtype_and_quantization_flags_win_over_the_engine_table(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[engine]\ndtype = "bfloat16"\nquantization = "int4"\nmax_num_seqs = 4\n')
    flags = ("--config", str(toml), "--dtype", "float32", "--quantization", "int8")
    engine = engine_config(server_config(parse(*flags)), toml)  # type: ignore[arg-type]
    assert (engine.dtype, engine.quantization, engine.max_num_seqs) == ("float32", "int8", 4)
    unset = engine_config(server_config(parse("--config", str(toml))), toml)  # type: ignore[arg-type]
    assert (unset.dtype, unset.quantization) == ("bfloat16", "int4")
    with pytest.raises(SystemExit):
        parse("--quantization", "int3")


def test_compile_flag_wins_over_the_engine_table(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("[engine]\ncompile = true\n")
    off = engine_config(server_config(parse("--config", str(toml), "--no-compile")), toml)  # type: ignore[arg-type]
    assert off.compile is False
    unset = engine_config(server_config(parse("--config", str(toml))), toml)  # type: ignore[arg-type]
    assert unset.compile is True
    on = engine_config(server_config(parse("--compile")))  # type: ignore[arg-type]
    assert on.compile is True


def test_cuda_graphs_flag_wins_over_the_engine_table(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[engine]\ncompile = true\ndevice = "cuda"\ncuda_graphs = true\n')
    off = engine_config(server_config(parse("--config", str(toml), "--no-cuda-graphs")), toml)  # type: ignore[arg-type]
    assert off.cuda_graphs is False
    unset = engine_config(server_config(parse("--config", str(toml))), toml)  # type: ignore[arg-type]
    assert unset.cuda_graphs is True
    assert engine_config(server_config(parse())).cuda_graphs is None  # type: ignore[arg-type]
    with pytest.raises(ConfigError, match="needs a CUDA device"):
        engine_config(server_config(parse("--compile", "--cuda-graphs")))  # type: ignore[arg-type]


def test_kv_retention_flag_wins_over_the_engine_table(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text('[engine.retention]\nmode = "ttl"\npin_budget = 0.25\n')
    unset = engine_config(server_config(parse("--config", str(toml))), toml)  # type: ignore[arg-type]
    assert (unset.retention.mode, unset.retention.pin_budget) == ("ttl", 0.25)
    flags = ("--config", str(toml), "--kv-retention", "off")
    engine = engine_config(server_config(parse(*flags)), toml)  # type: ignore[arg-type]
    assert (engine.retention.mode, engine.retention.pin_budget) == ("off", 0.25)
    assert engine_config(server_config(parse())).retention.mode == "off"  # type: ignore[arg-type]
    with pytest.raises(SystemExit):
        parse("--kv-retention", "forever")


def test_parallel_sizes_flags_win_over_the_engine_table(tmp_path: Path) -> None:
    toml = tmp_path / "s.toml"
    toml.write_text("[engine]\ntensor_parallel_size = 3\n")
    unset = engine_config(server_config(parse("--config", str(toml))), toml)  # type: ignore[arg-type]
    assert (unset.tensor_parallel_size, unset.pipeline_parallel_size) == (3, 1)
    flags = parse("--config", str(toml), "--tensor-parallel-size", "2")
    assert engine_config(server_config(flags), toml).tensor_parallel_size == 2  # type: ignore[arg-type]
    assert engine_config(server_config(parse("-tp", "2"))).tensor_parallel_size == 2  # type: ignore[arg-type]


def test_bad_parallel_sizes_are_refused_before_the_server_starts() -> None:
    assert main(["serve", "--pipeline-parallel-size", "2", "--tensor-parallel-size", "2"]) == 2
    assert main(["serve", "--tensor-parallel-size", "0"]) == 2
    assert engine_config(server_config(parse("-pp", "2"))).pipeline_parallel_size == 2  # type: ignore[arg-type]


def test_num_threads_flag_wins_over_the_engine_table(tmp_path: Path) -> None:
    toml = tmp_path / "engine.toml"
    toml.write_text("[engine]\nnum_threads = 2\n")
    assert engine_config(server_config(parse("--config", str(toml))), toml).num_threads == 2  # type: ignore[arg-type]
    flagged = server_config(parse("--config", str(toml), "--num-threads", "1"))
    assert engine_config(flagged, toml).num_threads == 1  # type: ignore[arg-type]
    assert engine_config(server_config(parse())).num_threads is None  # type: ignore[arg-type]
    assert engine_config(server_config(parse("--decode-threads", "1"))).decode_threads == 1  # type: ignore[arg-type]


def test_a_router_over_cpu_replicas_charges_programs_in_their_unit() -> None:
    from agentrt.serving.engines import _router

    server = server_config(parse("--replicas", "2", "--scheduling-policy", "plas"))  # type: ignore[arg-type]
    router = _router(server, None, [])
    assert router.scheduler_config.service_unit == "tokens"  # what the CPU replicas resolve
    units = {e.backend.spec.options["scheduler"]["service_unit"] for e in router._engines.values()}
    assert units == {"tokens"}
    # In front of remote engines only, the router keeps "auto" (model time).
    server = server_config(parse("--backend", "openai+http://127.0.0.1:9/v1"))  # type: ignore[arg-type]
    assert _router(server, None, []).scheduler_config.service_unit == "auto"
