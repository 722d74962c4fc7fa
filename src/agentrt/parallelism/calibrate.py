"""Predicted against measured: each shipped plan's step on N local gloo processes.

``python -m agentrt.parallelism.calibrate --model tiny-llama --devices 2 [--train]``
prices every shipped plan with the cost model (operator times measured here;
each collective's per-call line measured through the runtime, see
:mod:`~agentrt.parallelism.collectives`), runs it with
:func:`~agentrt.parallelism.launch.verify` (the median of ``--repeats`` steps:
forwards, or forwards and backwards with ``--train``) and prints both, their ratio, and
whether the two rank the plans alike. ``--rounds R`` measures every plan
``R`` times, one plan after another in each round, and keeps each plan's
median: on a shared host the load drifts within a run, and round-robin lets
the drift fall on every plan alike. With more than one round every round
also measures its own primitives afresh (operator times, the collectives'
lines and the wait) and prices every plan with them before running the
plans, so each round's prediction and measurement see the same host; the
prediction kept is the median of the rounds' predictions.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from typing import Any

from agentrt.parallelism.errors import ParallelError
from agentrt.parallelism.search import Candidate


def shipped_plan(cand: Candidate) -> tuple[str, int | None] | None:
    """The plan name :func:`verify` runs for a search candidate, and its micro-batches (pipelines)."""
    if cand.family in ("dp", "tp"):
        return cand.family, None
    if cand.name == "coshard(k=2)":
        return "coshard", None
    if cand.family == "pp":  # pp(KIND,m=M)
        kind, micro = cand.name[3:-1].split(",m=")
        return ("pp" if kind == "infer" else kind), int(micro)
    if cand.family == "interlaced":
        return "interlaced", int(cand.name.split("m=")[1].rstrip(")"))
    return None  # 3-D needs 4 processes, run by hand


def pairs_in_order(rows: list[dict[str, Any]]) -> float:
    """The share of plan pairs the prediction orders as the measurement does (1.0: the same ranking)."""
    pairs = [(a, b) for i, a in enumerate(rows) for b in rows[i + 1 :]]
    if not pairs:
        return 1.0
    agree = sum(
        1
        for a, b in pairs
        if (a["predicted_seconds"] - b["predicted_seconds"])
        * (a["measured_seconds"] - b["measured_seconds"])
        > 0
    )
    return agree / len(pairs)


STANDARD = ("dp", "tp", "pp", "3d")  # the families Megatron and DeepSpeed express


def best_against_standard(
    rows: list[dict[str, Any]], priced: list[dict[str, Any]] | None = None
) -> str | None:
    """A line comparing the predicted-best plan that fits with the best standard plan that fits.

    ``priced``: every candidate's prediction (the measured ``rows`` may be a
    subset); both plans are chosen from it, and a plan left unmeasured says so.
    """
    pool = priced if priced is not None else rows
    fitting = [r for r in pool if r["fits"] and r.get("predicted_seconds") is not None]
    if not fitting:
        return None
    measured = {r["plan"]: r["measured_seconds"] for r in rows}

    def took(plan: str) -> str:
        return f"{measured[plan] * 1e3:.2f} ms" if plan in measured else "not measured"

    auto = min(fitting, key=lambda r: r["predicted_seconds"])
    standard = [r for r in fitting if r["family"] in STANDARD]
    if auto["family"] in STANDARD:
        return f"auto: {auto['plan']}, a standard plan"
    if not standard:
        return (
            f"auto: {auto['plan']} (predicted {auto['predicted_seconds'] * 1e3:.2f} ms, measured "
            f"{took(auto['plan'])}); no data, tensor, pipeline or 3-D plan fits"
        )
    rival = min(standard, key=lambda r: r["predicted_seconds"])
    line = (
        f"auto: {auto['plan']} against the best standard plan that fits, {rival['plan']}: "
        f"predicted {rival['predicted_seconds'] / auto['predicted_seconds']:.2f}x faster"
    )
    if auto["plan"] in measured and rival["plan"] in measured:
        return line + f", measured {measured[rival['plan']] / measured[auto['plan']]:.2f}x"
    return line + f" (measured: {took(auto['plan'])} against {took(rival['plan'])})"


def calibrate(
    model_spec: str,
    ndevices: int,
    batch: int,
    seq: int,
    *,
    train: bool = False,
    repeats: int = 10,
    memory_limit: int | None = None,
    rounds: int = 1,
    plans: list[str] | None = None,
) -> dict[str, Any]:
    from agentrt.parallelism.cost import measured_comm
    from agentrt.parallelism.launch import example_inputs, load_model, verify, vocab_of
    from agentrt.parallelism.search import search

    model = load_model(model_spec)
    ids, labels = example_inputs(vocab_of(model), batch, seq, 0)
    fresh = rounds > 1  # each round measures its own primitives

    def priced() -> tuple[Any, Any]:
        comm, _ = measured_comm(ndevices, cache=not fresh)
        found = search(
            model,
            ids,
            labels,
            ndevices,
            train=train,
            comm=comm,
            concurrent=ndevices,
            memory_limit=memory_limit,
            cache=not fresh,
        )
        return comm, found

    comm, found = priced()
    runs = [
        (cand, run)
        for cand in found.candidates
        if (run := shipped_plan(cand)) is not None
        and cand.estimate is not None
        and (plans is None or cand.name in plans)
    ]
    if plans is not None and len(runs) != len(set(plans)):
        known = ", ".join(c.name for c in found.candidates if shipped_plan(c) is not None)
        raise ParallelError(f"--plans names a plan not among the candidates ({known})")
    # Round-robin: every plan is measured once per round, so a change in the host's load over
    # the run falls on all plans alike; each plan keeps the median of its rounds.
    got: dict[str, list[Any]] = {cand.name: [] for cand, _ in runs}
    predicted: dict[str, list[float]] = {cand.name: [] for cand, _ in runs}
    waits: list[float] = []
    for r in range(rounds):
        round_comm, round_found = (comm, found) if r == 0 else priced()
        waits.append(round_comm.sync)
        by_name = {c.name: c for c in round_found.candidates}
        for cand, _ in runs:
            estimate = by_name[cand.name].estimate
            assert estimate is not None
            predicted[cand.name].append(estimate.seconds)
        for cand, (plan, micro) in runs:
            got[cand.name].append(
                verify(
                    model_spec,
                    plan,
                    ndevices,
                    train=train,
                    batch=batch,
                    seq=seq,
                    micro_batches=micro,
                    repeats=repeats,
                )
            )
    rows: list[dict[str, Any]] = []
    for cand, _ in runs:
        assert cand.estimate is not None
        results = got[cand.name]
        measured = statistics.median(r.seconds_parallel for r in results)
        prediction = statistics.median(predicted[cand.name])
        rows.append(
            {
                "plan": cand.name,
                "family": cand.family,
                "fits": cand.fits,
                "memory_bytes": cand.estimate.memory_bytes,
                "predicted_seconds": prediction,
                "predicted_rounds": predicted[cand.name],
                "predicted_comm_seconds": cand.estimate.comm_seconds,
                "measured_seconds": measured,
                "measured_rounds": [r.seconds_parallel for r in results],
                "single_device_seconds": statistics.median(r.seconds_single for r in results),
                "ratio": prediction / measured,
                "ok": all(r.ok for r in results),
            }
        )
    by_pred = [r["plan"] for r in sorted(rows, key=lambda r: r["predicted_seconds"])]
    by_meas = [r["plan"] for r in sorted(rows, key=lambda r: r["measured_seconds"])]
    return {
        "model": model_spec,
        "devices": ndevices,
        "train": train,
        "alpha": comm.alpha,
        "beta": comm.beta,
        "sync_seconds": comm.sync,
        "sync_rounds": waits,
        "memory_limit": memory_limit,
        "collectives": [
            {"primitive": p, "seconds_per_call": a, "seconds_per_byte": b}
            for p, a, b in comm.measured
        ],
        "rows": rows,
        "priced": [
            {
                "plan": c.name,
                "family": c.family,
                "fits": c.fits,
                "predicted_seconds": c.estimate.seconds,
                "memory_bytes": c.estimate.memory_bytes,
            }
            for c in found.candidates
            if c.estimate is not None
        ],
        "same_order": by_pred == by_meas,
        "pairs_in_order": pairs_in_order(rows),
        "order_predicted": by_pred,
        "order_measured": by_meas,
    }


def _plan_names(text: str) -> list[str]:
    """Split ``a,pp(1f1b,m=4)`` at the commas outside parentheses."""
    names, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += {"(": 1, ")": -1}.get(ch, 0)
        if ch == "," and depth == 0:
            names.append(text[start:i].strip())
            start = i + 1
    names.append(text[start:].strip())
    return [n for n in names if n]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentrt.parallelism.calibrate")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--train", action="store_true", help="time training steps, not forwards")
    parser.add_argument(
        "--repeats", type=int, default=10, help="timed steps per plan (the median is kept)"
    )
    parser.add_argument(
        "--plans",
        default=None,
        help="measure only these candidates, comma-separated, e.g. 'interlaced(m=2),pp(1f1b,m=4)' "
        "(every candidate is still priced)",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=1,
        help="measure every plan this many times, round-robin, and keep each plan's median",
    )
    parser.add_argument(
        "--memory-per-device",
        default=None,
        help="mark the plans over this limit (e.g. 10MiB) and compare the best that fits",
    )
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    from agentrt.parallelism.cli import parse_size

    limit = parse_size(args.memory_per_device) if args.memory_per_device else None
    try:
        report = _run(args, limit)
    except ParallelError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return 2
    _write(report, args)
    return 0


def _run(args: argparse.Namespace, limit: int | None) -> dict[str, Any]:
    return calibrate(
        args.model,
        args.devices,
        args.batch,
        args.seq,
        train=args.train,
        repeats=args.repeats,
        memory_limit=limit,
        rounds=args.rounds,
        plans=_plan_names(args.plans) if args.plans else None,
    )


def _write(report: dict[str, Any], args: argparse.Namespace) -> None:
    out = sys.stdout
    out.write(
        f"alpha {report['alpha'] * 1e6:.1f} us, beta {report['beta'] / 1e9:.2f} GB/s, "
        f"wait per synchronizing call {report['sync_seconds'] * 1e6:.0f} us"
        + (
            f" (rounds {', '.join(f'{w * 1e6:.0f}' for w in report['sync_rounds'])} us)"
            if len(report["sync_rounds"]) > 1
            else ""
        )
        + "\n"
    )
    for c in report["collectives"]:
        rate = 1 / c["seconds_per_byte"] / 1e9 if c["seconds_per_byte"] else float("inf")
        out.write(
            f"  {c['primitive']:<11} {c['seconds_per_call'] * 1e6:8.1f} us/call {rate:.2f} GB/s\n"
        )
    for r in report["rows"]:
        out.write(
            f"{r['plan']:<16} predicted {r['predicted_seconds'] * 1e3:8.2f} ms  measured "
            f"{r['measured_seconds'] * 1e3:8.2f} ms  ratio {r['ratio']:.2f}  "
            f"(one process {r['single_device_seconds'] * 1e3:.2f} ms)  "
            f"memory {r['memory_bytes'] / 2**20:.2f} MiB{'' if r['fits'] else ' (over the limit)'}"
            + (
                f"  rounds {', '.join(f'{x * 1e3:.1f}' for x in r['measured_rounds'])} ms"
                f" (predicted {', '.join(f'{x * 1e3:.1f}' for x in r['predicted_rounds'])} ms)"
                if len(r["measured_rounds"]) > 1
                else ""
            )
            + ("" if r["ok"] else "  MISMATCH with one device")
            + "\n"
        )
    out.write(
        f"same order: {report['same_order']}, {report['pairs_in_order']:.0%} of pairs "
        f"(predicted {report['order_predicted']}, "
        f"measured {report['order_measured']})\n"
    )
    shown = {r["plan"] for r in report["rows"]}
    for r in report["priced"]:
        if r["plan"] not in shown:
            out.write(
                f"{r['plan']:<16} predicted {r['predicted_seconds'] * 1e3:8.2f} ms  (not measured)  "
                f"memory {r['memory_bytes'] / 2**20:.2f} MiB{'' if r['fits'] else ' (over the limit)'}\n"
            )
    best = best_against_standard(report["rows"], report["priced"])
    if best is not None:
        out.write(best + "\n")
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)


if __name__ == "__main__":
    raise SystemExit(main())
