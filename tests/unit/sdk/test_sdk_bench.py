"""`agentrt bench sdk` runs, prints its table and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrt.cli import main


def test_bench_sdk_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sdk.json"
    assert (
        main(
            [
                "bench",
                "sdk",
                "--calls",
                "200",
                "--client-calls",
                "5",
                "--repeat",
                "1",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "SDK hook per call, inside a program" in table
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert payload["benchmark"] == "sdk"
    for key in (
        "hook_outside_us",
        "hook_inside_us",
        "begin_call_us",
        "fork_and_call_us",
        "client_ratio",
        "bare_openai_call_us",
        "headers_by_hand_call_us",
        "instrumented_openai_call_us",
    ):
        assert results[key] > 0
    assert results["hook_inside_us"] > results["hook_outside_us"]
    assert "agentrt's own work per instrumented call" in table
    assert "request" not in __import__("openai").OpenAI.__dict__  # the bench cleaned up


def test_bench_sdk_refuses_nonsense_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["bench", "sdk", "--calls", "0"])
