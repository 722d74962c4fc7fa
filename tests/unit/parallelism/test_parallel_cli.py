"""``agentrt plan``: a table of the shipped plans, JSON, and clear errors instead of tracebacks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrt.cli import main


def test_plan_prints_each_plan_and_writes_json(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    assert (
        main(["plan", "--model", "tiny-gpt", "--devices", "2", "--train", "--json", str(out)]) == 0
    )
    text = capsys.readouterr().out
    assert "tiny-gpt on 2 devices (training step" in text
    report = json.loads(out.read_text())
    plans = {p["plan"]: p for p in report["plans"]}
    assert set(plans) == {"dp", "tp", "coshard", "pp", "gpipe", "1f1b", "3d", "interlaced"}
    assert plans["interlaced"]["collectives"]["broadcast"] > 0
    assert plans["pp"]["stages"] == 2 and plans["pp"]["collectives"]["send/recv"] > 0
    assert "2 devices do not make at least 2 pipeline stages" in plans["3d"]["error"]
    assert plans["dp"]["collectives"]["all-reduce"] > plans["tp"]["collectives"]["all-reduce"] > 0
    assert plans["tp"]["param_bytes_per_device"] < plans["dp"]["param_bytes_per_device"]
    assert plans["dp"]["predicted_comm_seconds"] > 0


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (
            ["--model", "tiny-gpt", "--devices", "3", "--plan", "dp"],
            "dp: data parallel: input input_ids has batch size 4, which 3 devices do not divide",
        ),
        (["--model", "no-such-model", "--devices", "2"], "unknown model 'no-such-model'"),
        (["--model", "tiny-gpt", "--devices", "2", "--plan", "zz"], "unknown plan 'zz'"),
        (["--model", "tiny-gpt", "--devices", "0"], "--devices must be at least 1"),
    ],
)
def test_bad_requests_are_one_line_errors(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", *argv]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err


def test_a_folder_without_a_model_is_a_one_line_error(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["plan", "--model", str(tmp_path), "--devices", "2"]) == 2
    err = capsys.readouterr().err
    assert f"cannot load a causal LM from {tmp_path}" in err and "Traceback" not in err


def test_one_plan_failing_is_reported_beside_the_others(capsys: pytest.CaptureFixture[str]) -> None:
    # batch 6 divides over 3 devices, tiny-gpt's 64-wide layers do not
    assert main(["plan", "--model", "tiny-gpt", "--devices", "3", "--batch", "6"]) == 0
    text = capsys.readouterr().out
    assert "tp    error: tensor parallel: no linear layer" in text


@pytest.mark.slow
def test_plan_verify_runs_the_plan(capsys: pytest.CaptureFixture[str]) -> None:
    assert (
        main(["plan", "--model", "tiny-llama", "--devices", "2", "--plan", "tp", "--verify"]) == 0
    )
    assert "verify (float32): OK" in capsys.readouterr().out
