"""The cost model, the search over plans and `agentrt plan --plan auto`."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from agentrt.cli import main
from agentrt.parallelism import CostModel, ParallelError, lower
from agentrt.parallelism.cli import parse_size
from agentrt.parallelism.cost import OpTimes, fit_alpha_beta, load_profile, spmd_estimate
from agentrt.parallelism.plans import data_parallel, tensor_parallel


def test_alpha_beta_are_recovered_from_exact_ring_times() -> None:
    alpha, beta, n = 40e-6, 3e9, 2
    samples = [
        (b, 2 * (n - 1) * alpha + 2 * (n - 1) / n * b / beta) for b in (4096, 1 << 20, 8 << 20)
    ]
    model = fit_alpha_beta(samples, n)
    assert model.alpha == pytest.approx(alpha, rel=1e-6) and model.beta == pytest.approx(
        beta, rel=1e-6
    )
    with pytest.raises(ParallelError, match="at least two message sizes"):
        fit_alpha_beta(samples[:1], n)


def test_profiles_price_operators_without_running_them(llama_loss_graph: Any) -> None:
    a100 = load_profile("a100-80gb-x8")
    v100 = load_profile("v100-32gb-x32")
    assert (a100.devices, a100.nodes, v100.devices, v100.nodes) == (8, 1, 32, 2)
    assert v100.comm(32).beta == v100.beta_inter and v100.comm(16).beta == v100.beta
    fast, slow = OpTimes(llama_loss_graph, a100), OpTimes(llama_loss_graph, v100)
    assert sum(fast.seconds.values()) < sum(slow.seconds.values())
    with pytest.raises(ParallelError, match="unknown device profile 'h100'"):
        load_profile("h100")


def test_measured_times_are_cached(llama_loss_graph: Any, tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    first = OpTimes(llama_loss_graph)
    cached = json.loads((tmp_path / "parallel-op-times.json").read_text())
    assert len(cached) >= len({op.target for op in llama_loss_graph.ops})
    again = OpTimes(llama_loss_graph)
    assert again.seconds == first.seconds  # read back, not re-measured
    op = llama_loss_graph.ops[0]
    assert again.part(op, 4) <= again.part(op, 1)


def test_estimates_follow_the_plans(llama_loss_graph: Any) -> None:
    times = OpTimes(llama_loss_graph, load_profile("a100-80gb-x8"))
    cost = CostModel(alpha=5e-6, beta=230e9)
    dp = spmd_estimate("dp", lower(data_parallel(llama_loss_graph, 2), cost), times, train=True)
    tp = spmd_estimate("tp", lower(tensor_parallel(llama_loss_graph, 2), cost), times, train=True)
    assert dp.memory_bytes > tp.memory_bytes  # tensor parallel stores half of most weights
    assert dp.seconds == pytest.approx(dp.compute_seconds + dp.comm_seconds)


@pytest.mark.parametrize(
    ("text", "size"),
    [("8GiB", 8 * 2**30), ("512MiB", 512 * 2**20), ("1.5GB", 1_500_000_000), ("1024", 1024)],
)
def test_memory_sizes(text: str, size: int) -> None:
    assert parse_size(text) == size


def test_plan_auto_chooses_under_a_memory_limit(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "auto.json"
    argv = ["plan", "--model", "tiny-llama", "--devices", "4", "--train", "--batch", "8"]
    assert main([*argv, "--plan", "auto", "--memory-per-device", "1MiB", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    text = capsys.readouterr().out
    chosen = next(p for p in report["plans"] if p["plan"] == report["chosen"])
    assert chosen["fits"] and chosen["memory_bytes_per_device"] <= 2**20
    fitting = [p for p in report["plans"] if p.get("fits")]
    assert chosen["predicted_step_seconds"] == min(p["predicted_step_seconds"] for p in fitting)
    assert any(
        not p["fits"] and "error" not in p for p in report["plans"]
    )  # dp/tp exceed 1 MiB here
    assert f"chosen: {report['chosen']}" in text and "over the limit" in text


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--memory-per-device", "1KiB"], "no plan fits 1.0 KiB"),
        (["--memory-per-device", "lots"], "cannot read the memory size 'lots'"),
        (["--profile", "a100-80gb-x8", "--devices", "16"], "more than the profile's 8"),
        (["--model", "no-such-model"], "unknown model 'no-such-model'"),
    ],
)
def test_auto_errors_are_one_line(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    base = {"--model": "tiny-gpt", "--devices": "2"}
    for flag, value in zip(argv[::2], argv[1::2], strict=True):
        base[flag] = value
    flat = [x for kv in base.items() for x in kv]
    assert main(["plan", *flat, "--plan", "auto", *[a for a in argv if a not in flat]]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
