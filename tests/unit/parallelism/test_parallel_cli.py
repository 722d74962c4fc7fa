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


def test_plan_serve_reports_the_engine_split_next_to_the_tp_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "plan.json"
    argv = ["plan", "--model", "tiny-llama", "--devices", "2", "--serve", "--plan", "tp"]
    assert main([*argv, "--json", str(out)]) == 0
    assert (
        "agentrt serve --tensor-parallel-size 2 (the tp plan's Megatron split on the engine's "
        "decoder): query heads 2+2, KV heads 1+1, MLP units 64+64 per rank"
    ) in capsys.readouterr().out
    serving = json.loads(out.read_text())["engine_serving"]
    assert serving == {
        "tensor_parallel_size": 2,
        "heads": [2, 2],
        "kv_heads": [1, 1],
        "mlp": [64, 64],
    }
    # The tiny Llama has 2 KV heads: 4 ranks cannot serve it, and the plan says why.
    assert main(["plan", "--model", "tiny-llama", "--devices", "4", "--serve", "--plan", "tp"]) == 0
    assert (
        "--tensor-parallel-size 4: not possible: tensor_parallel_size 4 is larger than the model's 2 KV heads"
        in capsys.readouterr().out
    )
