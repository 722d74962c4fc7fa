"""``agentrt bench engine --compare``: agentrt served and another server, measured alike over HTTP."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.unit.agents.live_server import echo_server
from tests.unit.bench.llama_fakes import fake_llama_binary, flag, starts, write_gguf

from agentrt.bench.peer import StreamTiming, decode_rate, parse_peer
from agentrt.cli import main


def test_compare_measures_agentrt_serve_a_streaming_peer_and_a_managed_llama_server(
    tiny_folder: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("COLUMNS", "300")  # one line per table row, so phrases stay whole
    out = tmp_path / "engine.json"
    binary = fake_llama_binary(tmp_path, monkeypatch)
    gguf = write_gguf(tmp_path / "m.gguf", tied=True)
    with echo_server(token_delay=0.002) as (url, engine):
        code = main([
            "bench", "engine", "--model", str(tiny_folder), "--dtype", "float32", "--compare-only",
            "--compare", f"echo={url}", "--compare-streams", "1,3", "--compare-prompt-len", "40",
            "--compare-output-len", "6", "--ttft-prompt-len", "120", "--ttft-repeats", "2",
            "--llama-server", str(binary), "--llama-model", str(gguf), "--json", str(out),
        ])  # fmt: skip
    assert code == 0
    result = json.loads(out.read_text())
    assert result["single_stream"] is None and result["swap"] is None  # --compare-only
    comparison = result["comparison"]
    agentrt, echo, llama = comparison["systems"]
    assert [s["label"] for s in comparison["systems"]] == ["agentrt", "echo", "llama.cpp"]
    assert (
        agentrt["how"].startswith("agentrt serve --model ") and "--dtype float32" in agentrt["how"]
    )
    assert echo["how"] == "external server" and echo["model"] == "echo"
    for system in (agentrt, echo, llama):
        assert [d["streams"] for d in system["decode"]] == [1, 3]
        for d in system["decode"]:
            assert d["output_len"] == 6 and d["tok_s"] > 0 and d["per_stream_tok_s"] > 0
        first = system["first_token"]
        assert first["repeats"] == 2 and 0 < first["best_seconds"] <= first["seconds"]
        assert first["prefill_tok_s"] == first["prompt_tokens"] / first["seconds"]
    # The tiny model reads its weights; the echo server names no GGUF file.
    assert agentrt["weight_bytes"] > 0 and all(
        d["roofline_fraction"] > 0 for d in agentrt["decode"]
    )
    assert echo["weight_bytes"] is None and all(
        d["roofline_fraction"] is None for d in echo["decode"]
    )
    # The server counted the prompt the bench built to the requested length.
    assert abs(agentrt["first_token"]["prompt_tokens"] - 120) <= 2
    # Every request the echo engine saw asked for an exact length, ignoring EOS, streamed.
    assert all(r.sampling.ignore_eos for r in engine.requests)
    assert sorted({r.sampling.max_tokens for r in engine.requests}) == [1, 2, 4, 6]
    prompts = [r.prompt for r in engine.requests]
    assert len(set(prompts)) == len(prompts)  # no prompt cache can serve one from another
    # The managed server: a slot per stream, each with room for the longest prompt; the GGUF
    # file its /props names gives the roofline's bytes.
    assert llama["how"] == "llama-server -m m.gguf -t 2 -np 3 -c 552".replace(
        "-t 2", f"-t {flag(starts(tmp_path)[0], '--threads')}"
    )
    [argv] = starts(tmp_path)
    assert flag(argv, "--parallel") == "3" and flag(argv, "--ctx-size") == str(3 * (120 + 64))
    assert llama["weight_bytes"] == 256 and llama["weight_source"] == f"GGUF tensors of {gguf}"
    assert all(d["roofline_fraction"] > 0 for d in llama["decode"])
    printed = capsys.readouterr().out
    assert "agentrt speed / echo" in printed and "time to first token, " in printed
    assert "weights read per decode step" in printed


def test_decode_rate_spans_first_to_last_token_of_all_streams() -> None:
    def timing(first: float, last: float) -> StreamTiming:
        return StreamTiming(sent=0.0, first_token=first, last_token=last, chunks=11,
                            completion_tokens=11, prompt_tokens=5)  # fmt: skip

    rate = decode_rate([timing(1.0, 2.0), timing(1.5, 3.0)], 11, weight_bytes=10**9, bandwidth=10.0)
    assert rate.tok_s == 20 / 2.0 and rate.seconds == 3.0
    assert rate.per_stream_tok_s == (10 / 1.0 + 10 / 1.5) / 2
    # 10 tok/s over 2 streams is 5 steps/s, each reading 1 GB, against 10 GB/s.
    assert rate.roofline_fraction == pytest.approx(0.5)
    assert decode_rate([timing(1.0, 2.0)], 11, None, 10.0).roofline_fraction is None


def test_peer_names_parse_and_agentrt_is_reserved() -> None:
    import argparse

    assert parse_peer("llama.cpp=http://h:8080/v1/") == ("llama.cpp", "http://h:8080/v1", "")
    with pytest.raises(argparse.ArgumentTypeError):
        parse_peer("agentrt=http://h/v1")
    with pytest.raises(SystemExit, match="--compare-only needs"):
        main(["bench", "engine", "--compare-only"])


def test_the_compared_agentrt_serve_gets_the_bench_quantization_and_compile() -> None:
    import argparse

    from agentrt.bench.engine import add_arguments
    from agentrt.bench.peer import agentrt_serve_args

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    args = parser.parse_args(["--quantization", "int4", "--compile", "--serve-arg=--port=9"])
    flags = agentrt_serve_args(args)
    assert flags[flags.index("--quantization") + 1] == "int4"
    assert "--compile" in flags and flags[-1] == "--port=9"
    assert "--compile" not in agentrt_serve_args(parser.parse_args([]))
    assert not any("cuda-graphs" in f for f in flags)  # unset: the server's own default
    off = agentrt_serve_args(parser.parse_args(["--compile", "--no-cuda-graphs"]))
    assert "--no-cuda-graphs" in off
    assert "--cuda-graphs" in agentrt_serve_args(parser.parse_args(["--compile", "--cuda-graphs"]))
