"""`agentrt sim` on the command line: tables, JSON with the documented keys, the plot."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentrt.cli import main


def test_sim_writes_json_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out.json"
    png = tmp_path / "lat.png"
    code = main(
        [
            "sim",
            "--workload",
            "lats",
            "--programs",
            "4",
            "--rates",
            "0.05,0.2",
            "--policies",
            "fcfs,plas",
            "--json",
            str(out),
            "--plot",
            str(png),
        ]
    )
    assert code == 0
    report = json.loads(out.read_text())
    assert {
        "workload",
        "profile",
        "engines",
        "programs",
        "seed",
        "rates",
        "latency_target_s",
        "scheduler",
        "sim",
        "points",
        "headline",
        "token_latency_target_s",
        "token_latency_headline",
    } <= set(report)
    assert report["workload"] == "lats" and report["rates"] == [0.05, 0.2]
    assert [(p["label"], p["rate"]) for p in report["points"]] == [
        ("fcfs", 0.05),
        ("fcfs", 0.2),
        ("plas", 0.05),
        ("plas", 0.2),
    ]
    result = report["points"][0]["result"]
    assert {
        "latency",
        "token_latency",
        "throughput",
        "wait",
        "jain_fairness",
        "engines",
        "latency_by_kind",
    } <= set(result)
    assert {"mean", "p50", "p95", "p99"} == set(result["latency"])
    assert {"queue", "execution", "tool"} == set(result["wait"])
    assert {"preemptions", "swaps_out", "swaps_in", "recomputes"} <= set(result["engines"])
    for key in ("headline", "token_latency_headline"):
        fcfs_line = next(h for h in report[key] if h["label"] == "fcfs")
        assert fcfs_line["ratio_vs_fcfs"] == pytest.approx(1.0)
    light = next(p["result"] for p in report["points"] if p["label"] == "fcfs")
    assert report["token_latency_target_s"] == pytest.approx(3 * light["token_latency"]["mean"])
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    printed = capsys.readouterr().out
    assert "throughput at mean latency" in printed and "mean token latency" in printed
    assert "plas" in printed


def test_sim_compares_balancers_over_several_engines(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    assert (
        main(
            [
                "sim",
                "--workload",
                "lats",
                "--programs",
                "3",
                "--rates",
                "0.1",
                "--policies",
                "atlas",
                "--engines",
                "2",
                "--balancer",
                "round_robin,locality",
                "--json",
                str(out),
            ]
        )
        == 0
    )
    report = json.loads(out.read_text())
    assert report["engines"] == 2
    assert [p["label"] for p in report["points"]] == ["atlas@round_robin", "atlas@locality"]


def test_a_profile_field_is_set_from_the_command_line(tmp_path: Path) -> None:
    out = tmp_path / "out.json"
    args = ["sim", "--workload", "lats", "--programs", "2", "--rates", "0.1", "--policies", "fcfs"]
    assert main([*args, "--set", "max_batch_size=8", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["profile"] == "a100-llama3-8b (max_batch_size=8)"
    with pytest.raises(SystemExit, match="not an engine profile field: slots"):
        main([*args, "--set", "slots=8"])
    with pytest.raises(SystemExit, match="needs FIELD=VALUE"):
        main([*args, "--set", "max_batch_size"])


def test_bad_rates_are_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sim", "--rates", "0,-1"])
    assert "rates must be positive" in capsys.readouterr().err


def test_unknown_policy_or_balancer_is_rejected(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sim", "--policies", "fcfs,sjf"])
    assert "unknown sjf" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["sim", "--balancer", "random"])
    assert "unknown random" in capsys.readouterr().err


def _sweep_report(tmp_path: Path, args: str) -> dict[str, Any]:
    """``agentrt sim ARGS --json``'s report (the run must succeed)."""
    out = tmp_path / "out.json"
    assert main(["sim", *args.split(), "--json", str(out)]) == 0
    report: dict[str, Any] = json.loads(out.read_text())
    return report


def test_sim_compares_retention_modes(tmp_path: Path) -> None:
    report = _sweep_report(
        tmp_path,
        "--workload lats --programs 4 --rates 0.2 --policies plas,fcfs --kv-retention ttl,off",
    )
    assert [(p["label"], p["retention"]) for p in report["points"]] == [
        ("fcfs+off", "off"),
        ("fcfs+ttl", "ttl"),
        ("plas+off", "off"),
        ("plas+ttl", "ttl"),
    ]
    ttl = report["points"][1]["result"]["engines"]
    assert ttl["pins"] > 0 and report["points"][0]["result"]["engines"]["pins"] == 0
    assert report["headline"][0]["label"] == "fcfs+off"
    assert report["headline"][0]["ratio_vs_fcfs"] == 1.0


def test_sim_rejects_an_unknown_retention_mode(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["sim", "--workload", "lats", "--kv-retention", "forever"])
    assert "unknown forever" in capsys.readouterr().err


def test_sim_compares_oracles_against_the_policy_alone(tmp_path: Path) -> None:
    report = _sweep_report(
        tmp_path,
        "--workload mixed --programs 9 --rates 0.2,2 --policies fcfs --oracle remaining,none,kind",
    )
    labels = [(p["label"], p["oracle"]) for p in report["points"]]
    assert labels == [
        ("fcfs", "none"),
        ("fcfs", "none"),
        ("fcfs+oracle:remaining", "remaining"),
        ("fcfs+oracle:remaining", "remaining"),
        ("fcfs+oracle:kind", "kind"),
        ("fcfs+oracle:kind", "kind"),
    ]
    assert report["headline"][0] == {**report["headline"][0], "label": "fcfs", "ratio_vs_fcfs": 1.0}
    with pytest.raises(SystemExit):
        main(["sim", "--workload", "lats", "--oracle", "psychic"])
