"""The managed llama.cpp server: found, started fresh per measured side with agentrt's slots and
threads, health-waited, measured, stopped; against a stand-in binary that speaks its flags."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.bench.llama_fakes import executable, fake_llama_binary, flag, starts, write_gguf

from agentrt.bench.llama_server import (
    LLAMA_SERVER_ENV,
    LlamaServerConfig,
    LlamaServerError,
    find_llama_server,
    llama_server,
)
from agentrt.bench.peer import gguf_decode_bytes
from agentrt.cli import main


@pytest.fixture
def fake_binary(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    return fake_llama_binary(tmp_path, monkeypatch)


def test_decode_bytes_count_a_separate_embedding_once_per_token(tmp_path: Path) -> None:
    # Tied: the head reads the whole embedding every step. Untied: the embedding gives one row.
    assert gguf_decode_bytes(write_gguf(tmp_path / "tied.gguf", tied=True)) == 128 + 128
    assert gguf_decode_bytes(write_gguf(tmp_path / "untied.gguf", tied=False)) == 128 + 128


def test_the_binary_is_the_flag_then_the_environment_then_path(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = executable(tmp_path / "a", "#!/bin/sh\n")
    second = executable(tmp_path / "b", "#!/bin/sh\n")
    on_path = tmp_path / "bin"
    on_path.mkdir()
    third = executable(on_path / "llama-server", "#!/bin/sh\n")
    monkeypatch.setenv("PATH", str(on_path))
    monkeypatch.setenv(LLAMA_SERVER_ENV, str(second))
    assert find_llama_server(str(first)) == first
    assert find_llama_server(None) == second
    monkeypatch.delenv(LLAMA_SERVER_ENV)
    assert find_llama_server(None) == third
    monkeypatch.setenv("PATH", str(tmp_path / "nowhere"))
    assert find_llama_server(None) is None
    assert find_llama_server(str(tmp_path / "missing")) is None


def test_a_server_that_exits_is_reported_with_its_log(tmp_path: Path) -> None:
    binary = executable(
        tmp_path / "llama-server", "#!/bin/sh\necho 'error: bad model file'\nexit 3\n"
    )
    config = LlamaServerConfig(binary=binary, model=tmp_path / "m.gguf", slots=2, threads=1)
    with (
        pytest.raises(LlamaServerError, match=r"exited with 3(.|\n)*bad model file"),
        llama_server(config, startup_timeout=30),
    ):
        pass


def test_an_illegal_instruction_says_what_to_try(tmp_path: Path) -> None:
    binary = executable(tmp_path / "llama-server", "#!/bin/sh\nkill -ILL $$\n")
    config = LlamaServerConfig(binary=binary, model=tmp_path / "m.gguf", slots=1, threads=1)
    with (
        pytest.raises(LlamaServerError, match=r"illegal instruction.*--no-repack"),
        llama_server(config, startup_timeout=30),
    ):
        pass


def test_the_server_waits_for_health_and_is_stopped_after(
    fake_binary: Path, tmp_path: Path
) -> None:
    import httpx

    model = write_gguf(tmp_path / "m.gguf", tied=True)
    config = LlamaServerConfig(
        binary=fake_binary, model=model, slots=3, threads=2, ctx_per_slot=512
    )
    assert config.describe() == "llama-server -m m.gguf -t 2 -np 3 -c 1536"
    with llama_server(config, startup_timeout=60) as url:
        assert httpx.get(url.removesuffix("/v1") + "/health").status_code == 200  # loaded
        assert httpx.get(url + "/models").json()["data"][0]["id"] == "echo"
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models")
    [argv] = starts(tmp_path)
    assert (flag(argv, "--parallel"), flag(argv, "--threads"), flag(argv, "--ctx-size")) == (
        "3",
        "2",
        "1536",
    )


def test_bench_compare_starts_llama_fresh_per_rate_with_agentrts_batch(
    fake_binary: Path, tmp_path: Path
) -> None:
    out = tmp_path / "compare.json"
    model = write_gguf(tmp_path / "m.gguf", tied=True)
    code = main([
        "bench", "compare", "--policies", "", "--llama-server", str(fake_binary),
        "--llama-model", str(model), "--llama-threads", "1", "--serve-arg=--max-num-seqs=3",
        "--workload", "chat", "--num-programs", "2", "--rates", "5,10", "--json", str(out),
        "--no-progress",
    ])  # fmt: skip
    assert code == 0
    [system] = json.loads(out.read_text())["systems"]
    assert system["label"] == "llama.cpp"
    assert [(r["rate"], r["completed"], r["errors"]) for r in system["runs"]] == [
        (5.0, 2, 0),
        (10.0, 2, 0),
    ]
    # One fresh server per rate, each with as many slots as agentrt's batch.
    assert len(starts(tmp_path)) == 2
    for argv in starts(tmp_path):
        assert flag(argv, "--parallel") == "3" and flag(argv, "--threads") == "1"
        assert flag(argv, "--ctx-size") == str(3 * 4096) and flag(argv, "--model") == str(model)


def test_bench_compare_says_when_the_binary_is_missing(tmp_path: Path, capsys) -> None:
    code = main([
        "bench", "compare", "--policies", "", "--llama-server", str(tmp_path / "none"),
        "--workload", "chat", "--num-programs", "1", "--rates", "5", "--no-progress",
    ])  # fmt: skip
    assert code == 2
    assert "no executable llama-server" in capsys.readouterr().out


def test_the_server_stops_when_the_benchmark_is_killed(fake_binary: Path, tmp_path: Path) -> None:
    import subprocess
    import sys
    import time

    import httpx

    model = write_gguf(tmp_path / "m.gguf", tied=True)
    script = (
        "import sys, time\n"
        "from pathlib import Path\n"
        "from agentrt.bench.llama_server import LlamaServerConfig, llama_server\n"
        f"config = LlamaServerConfig(binary=Path({str(fake_binary)!r}), model=Path({str(model)!r}),"
        " slots=1, threads=1)\n"
        "with llama_server(config, startup_timeout=60) as url:\n"
        "    print(url, flush=True)\n"
        "    time.sleep(600)\n"
    )
    bench = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        assert bench.stdout is not None
        url = bench.stdout.readline().strip()
        assert httpx.get(url + "/models").status_code == 200
    finally:
        bench.kill()  # no finally block runs in it
        bench.wait()
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            httpx.get(url + "/models", timeout=1.0)
        except httpx.HTTPError:
            return
        time.sleep(0.2)
    pytest.fail("llama-server outlived the benchmark that started it")
