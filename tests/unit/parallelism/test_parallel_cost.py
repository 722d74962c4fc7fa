"""The cost model, the search over plans and `agentrt plan --plan auto`."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from agentrt.cli import main
from agentrt.parallelism import CostModel, ParallelError, lower
from agentrt.parallelism.cli import parse_size
from agentrt.parallelism.collectives import (
    PRIMITIVES,
    SIZES,
    SYNC,
    fit_line,
    lines,
    measure,
    sync_wait,
)
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
    # a training step measured against its forward: a backward costs something, not 10 forwards
    assert 1.0 < again.train_factor == first.train_factor < 50
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


@pytest.mark.slow  # three captures of a 16-layer model: about 13 s
def test_auto_finds_the_interlaced_pipeline_where_no_standard_plan_fits() -> None:
    from agentrt.parallelism.launch import example_inputs
    from agentrt.parallelism.models import tiny_llama_big_vocab
    from agentrt.parallelism.search import search

    ids, labels = example_inputs(16384, 4, 8, 0)
    found = search(
        tiny_llama_big_vocab(),
        ids,
        labels,
        2,
        train=True,
        memory_limit=10 * 2**20,
        profile=load_profile("a100-80gb-x8"),
    )
    assert found.best.family == "interlaced" and found.best.fits
    # The tied 16384 x 64 table: data parallelism holds it whole, a pipeline on its first and
    # last stage, tensor parallelism keeps the whole batch's logits; the interlaced pipeline
    # holds half of the table on each device and one micro-batch's logits at a time.
    standard = {c.name: c for c in found.candidates if c.family in ("dp", "tp", "pp", "3d")}
    assert {"dp", "tp", "pp(1f1b,m=2)", "pp(1f1b,m=4)"} <= set(standard)
    assert all(c.estimate is not None and not c.fits for c in standard.values())


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


def test_a_measured_line_prices_each_call_and_falls_back_elsewhere() -> None:
    lines = (("all-reduce", 1e-3, 1e-9), ("all-gather", 5e-4, 2e-9), ("send/recv", 3e-5, 1e-10))
    cost = CostModel(alpha=1e-5, beta=1e10, measured=lines, measured_n=2)
    assert cost.seconds("all-reduce", 1000, 2) == pytest.approx(1e-3 + 1e-6)
    # reduce-scatter moves what all-gather moves, all-to-all half of it on 2 devices
    assert cost.seconds("reduce-scatter", 1000, 2) == pytest.approx(5e-4 + 2e-6)
    assert cost.seconds("all-to-all", 1000, 2) == pytest.approx(5e-4 + 1e-6)
    # another group size has no measurement: the ring formula of alpha and beta
    assert cost.seconds("all-reduce", 1000, 4) == pytest.approx(6 * 1e-5 + 1.5 * 1000 / 1e10)
    # a point-to-point transfer is between two ranks whatever the group
    assert cost.seconds("send/recv", 1000, 8) == pytest.approx(3e-5 + 1e-7)
    assert CostModel(alpha=1e-5, beta=1e10).seconds("broadcast", 1000, 4) == pytest.approx(
        3e-5 + 1e-7
    )
    # a plain all-gather (not the runtime's DTensor path) has a line of its own, or the formula
    assert cost.seconds("all-gather/plain", 1000, 4) == pytest.approx(3e-5 + 0.75 * 1000 / 1e10)
    plain = CostModel(measured=(*lines, ("all-gather/plain", 2e-4, 0.0)), measured_n=2)
    assert plain.seconds("all-gather/plain", 1000, 2) == pytest.approx(2e-4)


def test_a_line_is_recovered_from_exact_collective_times() -> None:
    fixed, per_byte = 7e-4, 4e-10
    samples = [(b, fixed + per_byte * b) for b in SIZES]
    assert fit_line(samples) == pytest.approx((fixed, per_byte), rel=1e-6)
    # a fall in time with size fits no negative per-byte cost
    assert fit_line([(4096, 2e-3), (1 << 20, 1e-3)])[1] == 0.0
    with pytest.raises(ParallelError, match="two message sizes"):
        fit_line([(4096, 1e-3), (4096, 2e-3)])


def test_per_call_costs_rank_a_plan_with_many_more_collectives_slower(
    gpt_logits_graph: Any,
) -> None:
    """Tensor parallel calls an all-reduce per layer half; data parallel's forward gathers once.

    With each call costing a millisecond (the runtime on a loaded host) the
    model must put the plan with several times the calls well behind; the
    wire's alpha and beta alone (microseconds, gigabytes per second) see a
    gap fifty times smaller or less.
    """
    g = gpt_logits_graph
    times = OpTimes(g, load_profile("a100-80gb-x8"))
    per_call = CostModel(
        measured=(("all-reduce", 1e-3, 0.0), ("all-gather", 1e-3, 0.0), ("local-chunk", 0.0, 0.0)),
        measured_n=2,
    )
    dp = spmd_estimate("dp", lower(data_parallel(g, 2), per_call), times, train=False)
    tp = spmd_estimate("tp", lower(tensor_parallel(g, 2), per_call), times, train=False)
    calls_dp = sum(lower(data_parallel(g, 2)).collectives().values())
    calls_tp = sum(lower(tensor_parallel(g, 2)).collectives().values())
    assert calls_tp >= 5 * calls_dp
    assert tp.comm_seconds == pytest.approx(calls_tp * 1e-3, rel=1e-3)  # local copies add little
    assert tp.seconds > dp.seconds + (calls_tp - calls_dp) * 1e-3 * 0.9
    wire = CostModel(alpha=5e-6, beta=100e9)
    dp_w = spmd_estimate("dp", lower(data_parallel(g, 2), wire), times, train=False)
    tp_w = spmd_estimate("tp", lower(tensor_parallel(g, 2), wire), times, train=False)
    assert (tp.seconds - dp.seconds) > 50 * abs(tp_w.comm_seconds - dp_w.comm_seconds)


def test_collectives_are_measured_through_the_runtime_and_cached(tmp_path: Path) -> None:
    samples = measure(2, tmp_path)
    assert set(samples) == {*PRIMITIVES, SYNC}
    for prim in PRIMITIVES:
        points = samples[prim]
        assert [b for b, _ in points] == list(SIZES), prim
        assert all(0 < s < 5.0 for _, s in points), prim
    assert 0.0 <= sync_wait(samples) < 1.0  # the wait per call, measured beside the lines
    cached = tmp_path / "parallel-gloo-collectives-2.json"
    assert json.loads(cached.read_text())["all-reduce"] == [list(p) for p in samples["all-reduce"]]
    assert measure(2, tmp_path) == samples  # read back, not re-measured
    fitted = dict((p, (a, b)) for p, a, b in lines(samples))
    assert set(fitted) == set(PRIMITIVES) and all(a >= 0 and b >= 0 for a, b in fitted.values())
    with pytest.raises(ParallelError, match="at least 2 processes"):
        measure(1)


def test_the_sync_wait_is_added_to_every_call_that_synchronizes_ranks() -> None:
    lines = (("all-reduce", 1e-3, 0.0), ("local-chunk", 1e-4, 0.0), ("send/recv", 5e-5, 0.0))
    calm = CostModel(measured=lines, measured_n=2)
    loaded = replace(calm, sync=4e-4)
    for prim in ("all-reduce", "send/recv", "broadcast", "all-gather"):
        assert loaded.seconds(prim, 4096, 2) == pytest.approx(calm.seconds(prim, 4096, 2) + 4e-4)
    for prim in ("local-chunk", "local-vchunk"):  # no other rank to wait for
        assert loaded.seconds(prim, 4096, 2) == calm.seconds(prim, 4096, 2)


def test_calibration_runs_each_searched_candidate_as_its_shipped_plan() -> None:
    from agentrt.parallelism.calibrate import shipped_plan
    from agentrt.parallelism.search import Candidate

    assert shipped_plan(Candidate("dp", "dp")) == ("dp", None)
    assert shipped_plan(Candidate("coshard(k=2)", "coshard")) == ("coshard", None)
    assert shipped_plan(Candidate("coshard(k=4)", "coshard")) is None
    assert shipped_plan(Candidate("pp(infer,m=4)", "pp")) == ("pp", 4)
    assert shipped_plan(Candidate("pp(1f1b,m=2)", "pp")) == ("1f1b", 2)
    assert shipped_plan(Candidate("interlaced(m=8)", "interlaced")) == ("interlaced", 8)
    assert shipped_plan(Candidate("3d(tp=2,pp=2,m=4)", "3d")) is None


def test_operator_times_can_be_measured_with_ranks_sharing_the_host(
    gpt_logits_graph: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    shared = OpTimes(gpt_logits_graph, concurrent=2)
    assert set(shared.seconds) == {op.name for op in gpt_logits_graph.ops}
    assert all(s > 0 for s in shared.seconds.values())
    keys = json.loads((tmp_path / "parallel-op-times.json").read_text())
    assert keys and all(k.endswith("-x2") for k in keys)  # kept apart from one-rank times


def test_the_share_of_plan_pairs_ranked_alike() -> None:
    from agentrt.parallelism.calibrate import pairs_in_order

    def row(pred: float, meas: float) -> dict[str, float]:
        return {"predicted_seconds": pred, "measured_seconds": meas}

    assert pairs_in_order([row(1, 10), row(2, 20), row(3, 30)]) == 1.0
    assert pairs_in_order([row(1, 30), row(2, 20), row(3, 10)]) == 0.0
    assert pairs_in_order([row(1, 10), row(2, 30), row(3, 20)]) == pytest.approx(2 / 3)


@pytest.mark.slow  # three captures of a model with a 65536-row table: about 10 s
def test_auto_splits_the_head_and_its_loss_where_the_pipelines_hold_them_whole() -> None:
    """A 65536 x 64 tied table on a device whose arithmetic is slow next to its links (a CPU).

    Under 48 MiB per device data and tensor parallelism do not fit (the whole
    table or the whole batch's logits); a pipeline fits but runs the head and
    its loss whole on its last stage. The interlaced pipeline splits both over
    the two devices and is predicted at least 1.5x faster than the best of them.
    """
    from agentrt.parallelism.cost import DeviceProfile
    from agentrt.parallelism.launch import example_inputs
    from agentrt.parallelism.models import tiny_llama_huge_vocab
    from agentrt.parallelism.search import search

    cpu = DeviceProfile(
        "one CPU core per device",
        devices=2,
        nodes=1,
        flops=20e9,
        memory_bandwidth=10e9,
        memory=2**30,
        overhead=10e-6,
        alpha=50e-6,
        beta=2e9,
        alpha_inter=50e-6,
        beta_inter=2e9,
    )
    ids, labels = example_inputs(65536, 4, 32, 0)
    found = search(
        tiny_llama_huge_vocab(), ids, labels, 2, train=True, memory_limit=48 * 2**20, profile=cpu
    )
    best = found.best
    assert best.family == "interlaced" and best.estimate is not None
    standard = [c for c in found.candidates if c.family in ("dp", "tp", "pp", "3d")]
    assert {c.name for c in standard if not c.fits} >= {"dp", "tp"}
    rival = min(
        (c for c in standard if c.fits and c.estimate is not None),
        key=lambda c: c.estimate.seconds,  # type: ignore[union-attr]
    )
    assert rival.family == "pp" and rival.estimate is not None
    assert rival.estimate.seconds >= 1.5 * best.estimate.seconds


def test_calibrate_compares_auto_with_the_best_standard_plan_among_all_priced() -> None:
    from agentrt.parallelism.calibrate import _plan_names, best_against_standard

    assert _plan_names("interlaced(m=2), pp(1f1b,m=4),dp") == [
        "interlaced(m=2)",
        "pp(1f1b,m=4)",
        "dp",
    ]

    def row(plan: str, family: str, pred: float, fits: bool = True) -> dict[str, Any]:
        return {"plan": plan, "family": family, "predicted_seconds": pred, "fits": fits}

    priced = [
        row("dp", "dp", 0.5, fits=False),
        row("pp(1f1b,m=4)", "pp", 0.3),
        row("pp(1f1b,m=2)", "pp", 0.4),
        row("interlaced(m=2)", "interlaced", 0.2),
    ]
    rows = [
        {**priced[1], "measured_seconds": 0.15},
        {**priced[3], "measured_seconds": 0.1},
    ]
    assert best_against_standard(rows, priced) == (
        "auto: interlaced(m=2) against the best standard plan that fits, pp(1f1b,m=4): "
        "predicted 1.50x faster, measured 1.50x"
    )
    # the rival chosen by prediction among every candidate, even one left unmeasured
    priced[2]["predicted_seconds"] = 0.25
    assert best_against_standard(rows, priced) == (
        "auto: interlaced(m=2) against the best standard plan that fits, pp(1f1b,m=2): "
        "predicted 1.25x faster (measured: 100.00 ms against not measured)"
    )


def test_calibrate_rounds_price_every_round_with_its_own_fresh_primitives(
    monkeypatch: Any,
) -> None:
    """Each round measures the collectives and operator times afresh and prices the plans with
    them before running them; the prediction kept is the median of the rounds' predictions."""
    from types import SimpleNamespace

    from agentrt.parallelism import calibrate as cal
    from agentrt.parallelism import cost, launch, search
    from agentrt.parallelism.cost import Estimate
    from agentrt.parallelism.search import Candidate, Search

    measured_with: list[bool] = []
    searched_with: list[bool] = []
    predictions = iter([0.010, 0.030, 0.020])  # one per round
    measurements = iter([0.012, 0.011, 0.040])

    def fake_comm(n: int, *, cache: bool = True) -> tuple[CostModel, list[Any]]:
        measured_with.append(cache)
        return CostModel(sync=1e-4 * len(measured_with)), []

    def fake_search(*args: Any, cache: bool = True, **kwargs: Any) -> Search:
        searched_with.append(cache)
        found = Search(2, True, None)
        seconds = next(predictions)
        found.candidates.append(
            Candidate("dp", "dp", Estimate("dp", seconds, seconds, 0.0, 1), fits=True)
        )
        return found

    def fake_verify(*args: Any, **kwargs: Any) -> Any:
        return SimpleNamespace(seconds_parallel=next(measurements), seconds_single=0.001, ok=True)

    monkeypatch.setattr(cost, "measured_comm", fake_comm)
    monkeypatch.setattr(search, "search", fake_search)
    monkeypatch.setattr(launch, "verify", fake_verify)
    report = cal.calibrate("tiny-llama", 2, 4, 8, train=True, rounds=3)
    assert measured_with == [False] * 3 and searched_with == [False] * 3
    (row,) = report["rows"]
    assert row["predicted_rounds"] == [0.010, 0.030, 0.020]
    assert row["predicted_seconds"] == pytest.approx(0.020)
    assert row["measured_seconds"] == pytest.approx(0.012)
    assert row["ratio"] == pytest.approx(0.020 / 0.012)
    assert report["sync_rounds"] == pytest.approx([1e-4, 2e-4, 3e-4])
    # one round keeps the cached primitives, as before
    measured_with.clear()
    searched_with.clear()
    predictions, measurements = iter([0.01]), iter([0.01])
    cal.calibrate("tiny-llama", 2, 4, 8, train=True, rounds=1)
    assert measured_with == [True] and searched_with == [True]


class _Flat:
    """Every part of every operator takes one millisecond, whatever its split (a counting aid)."""

    train_factor = 3.0
    checkpoint_seconds = 0.0

    def part(self, op: Any, ways: int, label: str | None = None) -> float:
        return 1e-3


class _Checkpointed(_Flat):
    """As :class:`_Flat`, and a checkpointed part costs half a millisecond more."""

    checkpoint_seconds = 5e-4


def test_a_co_sharded_operator_costs_its_k_parts_per_device_and_their_recompute(
    llama_loss_graph: Any,
) -> None:
    from agentrt.parallelism.cost import device_compute
    from agentrt.parallelism.plans import coshard

    g = llama_loss_graph
    free = CostModel(alpha=0.0, beta=1e30, local=1e30)
    tp = lower(tensor_parallel(g, 2), free)
    co = lower(coshard(g, 2, 2), free)
    colocated = [
        op for op in g.ops if (split := co.plan.transform_of(op)) is not None and split.n == 2 * 2
    ]
    assert colocated and all(
        op.target.__name__.startswith("scaled_dot_product_attention") for op in colocated
    )
    for op in colocated:  # two parts one after another, and each again in the backward
        assert device_compute(co, op, _Flat()) == (2e-3, 2e-3)
        assert device_compute(tp, op, _Flat()) == (1e-3, 0.0)
    forward = [spmd_estimate(p, prog, _Flat(), train=False) for p, prog in (("tp", tp), ("co", co))]
    assert forward[1].compute_seconds - forward[0].compute_seconds == pytest.approx(
        len(colocated) * 1e-3
    )
    train = [spmd_estimate(p, prog, _Flat(), train=True) for p, prog in (("tp", tp), ("co", co))]
    # a training step: three forwards' worth of each part, plus the parts' recompute
    assert train[1].compute_seconds - train[0].compute_seconds == pytest.approx(
        len(colocated) * (3 * 1e-3 + 2e-3)
    )
    # each checkpointed part pays the checkpoint in a training step, never in a forward
    for op in colocated:
        assert device_compute(co, op, _Checkpointed()) == (2e-3, 2e-3 + 2 * 5e-4)
        assert device_compute(tp, op, _Checkpointed()) == (1e-3, 0.0)
    checked = spmd_estimate("co", co, _Checkpointed(), train=True)
    assert checked.compute_seconds - train[1].compute_seconds == pytest.approx(
        len(colocated) * 2 * 5e-4
    )
    assert spmd_estimate("co", co, _Checkpointed(), train=False).compute_seconds == pytest.approx(
        forward[1].compute_seconds
    )


def test_parts_are_measured_at_their_shapes_through_the_split_path(
    llama_loss_graph: Any, tmp_path: Path, monkeypatch: Any
) -> None:
    from agentrt.parallelism.cost import part_shapes, split_labels

    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    g = llama_loss_graph
    times = OpTimes(g, splits=(2,), colocated=(4,))
    linear = next(op for op in g.ops if op.target.__name__.startswith("linear"))
    attention = {op.name for op in g.ops if "scaled_dot_product" in op.target.__name__}
    # co-shard's counts only for the operators it runs several parts of per device
    assert {key[0] for key in times.beyond if key[2] == 4} == attention
    labels = split_labels(linear)
    out_features, in_features = linear.anno.inputs[1]  # the weight is (out, in)
    # the input's rows, the output features, the reduced input features
    assert {out_features, in_features, *linear.anno.inputs[0][:-1]} == set(labels)
    shapes = part_shapes(linear, out_features, 2)
    assert shapes is not None
    assert shapes[1] == (linear.inputs[1].shape[0] // 2, linear.inputs[1].shape[1])
    assert part_shapes(linear, out_features, 7) is None  # 7 does not divide the features
    for label in labels:  # every way the plans may cut it was run and timed
        assert (linear.name, label, 2) in times.beyond
    whole = times.seconds[linear.name]
    measured = times.part(linear, 2, out_features)
    assert measured == pytest.approx(
        max(whole + times.beyond[(linear.name, out_features, 2)], times.overhead)
    )
    # without a label (a share of the batch's loss) or a count not measured: the share of the whole
    share = times.overhead + (whole - times.overhead) / 2
    assert times.part(linear, 2) == pytest.approx(share)
    assert times.part(linear, 16, out_features) == pytest.approx(
        times.overhead + (whole - times.overhead) / 16
    )
    # co-shard's checkpoint, timed on this host: something, and less than a whole forward's worth
    assert 0.0 < times.checkpoint_seconds < 0.05
    # read back from the cache, parts included
    again = OpTimes(g, splits=(2,), colocated=(4,))
    assert again.beyond == times.beyond
    assert again.checkpoint_seconds == times.checkpoint_seconds
    cached = json.loads((tmp_path / "parallel-op-times.json").read_text())
    assert any("|part-" in key for key in cached)
