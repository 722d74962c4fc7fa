"""`agentrt bench sdk` runs, prints its table and writes its JSON."""

from __future__ import annotations

import json
from pathlib import Path

import openai
import pytest

from agentrt.bench.sdk_overhead import _spread
from agentrt.cli import main
from agentrt.sdk import openai_clients


def test_bench_sdk_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sdk.json"
    argv = ["bench", "sdk", "--calls", "200", "--repeat", "1", "--rounds", "4"]
    assert main([*argv, "--round-calls", "3", "--json", str(out)]) == 0
    table = capsys.readouterr().out
    assert "SDK hook per call, inside a program" in table
    payload = json.loads(out.read_text())
    results = payload["results"]
    assert payload["benchmark"] == "sdk" and payload["rounds"] == 4
    for key in (
        "hook_outside_us",
        "hook_inside_us",
        "begin_call_us",
        "fork_and_call_us",
        "client_ratio",
        "bare_openai_call_us",
        "headers_by_hand_call_us",
        "instrumented_openai_call_us",
        "instrument_own_us",
    ):
        assert results[key] > 0, key
    for key in ("header_transport_us", "instrument_overhead_us", "instrument_own_us"):
        assert results[f"{key}_p25"] <= results[key] <= results[f"{key}_p75"]
    assert results["hook_inside_us"] > results["hook_outside_us"]
    assert results["load_average_before"] >= 0
    assert "agentrt's own work per instrumented call" in table
    assert "load average" in table
    assert "request" not in openai.OpenAI.__dict__  # the bench cleaned up
    assert openai_clients._sync_send is openai.OpenAI.request  # and put back the hand-over


def test_the_spread_is_the_median_and_quartiles() -> None:
    assert _spread([3.0]) == (3.0, 3.0, 3.0)
    assert _spread([1.0, 2.0, 3.0, 4.0, 100.0]) == (3.0, 2.0, 4.0)


def test_bench_sdk_refuses_nonsense_arguments() -> None:
    with pytest.raises(SystemExit):
        main(["bench", "sdk", "--calls", "0"])
    with pytest.raises(SystemExit):
        main(["bench", "sdk", "--rounds", "0"])
