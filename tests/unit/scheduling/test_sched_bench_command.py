"""``agentrt bench scheduler`` runs every policy, prints its table and writes JSON."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrt.cli import main
from agentrt.scheduling import POLICIES


def test_bench_scheduler_prints_a_table_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "sched.json"
    argv = ["bench", "scheduler", "--programs", "20", "--running", "8", "--waiting", "40"]
    assert (
        main([*argv, "--steps", "30", "--warmup", "5", "--unit", "tokens", "--json", str(out)]) == 0
    )
    table = capsys.readouterr().out
    for policy in POLICIES:
        assert policy in table
    report = json.loads(out.read_text())
    assert report["benchmark"] == "scheduler"
    assert report["setup"]["running"] == 8
    rows = {row["policy"]: row for row in report["results"]}
    assert set(rows) == set(POLICIES)
    for row in rows.values():
        assert 0 < row["decision_us_p50"] <= row["decision_us_p99"]
        assert row["batch_mean"] == 8  # the population keeps every slot busy
        assert row["live_calls"] == 48
    assert rows["fcfs"]["preempted_per_step"] == 0  # FCFS never preempts a running call here


def test_bench_scheduler_refuses_an_unknown_policy() -> None:
    with pytest.raises(SystemExit, match="unknown policies"):
        main(["bench", "scheduler", "--policies", "fcfs,sjf", "--steps", "1"])
