"""Predicted against measured: each shipped plan's forward on N local gloo processes.

``python -m agentrt.parallelism.calibrate --model tiny-llama --devices 2``
prices every plan with the cost model (operator times measured here,
alpha-beta fitted to gloo all-reduces), runs it with
:func:`~agentrt.parallelism.launch.verify` (fastest of three forwards) and
prints both, their ratio, and whether the two rank the plans alike.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def calibrate(model_spec: str, ndevices: int, batch: int, seq: int) -> dict[str, Any]:
    from agentrt.parallelism.cost import measured_comm
    from agentrt.parallelism.launch import example_inputs, load_model, verify, vocab_of
    from agentrt.parallelism.search import search

    comm, _ = measured_comm(ndevices)
    model = load_model(model_spec)
    ids, labels = example_inputs(vocab_of(model), batch, seq, 0)
    found = search(model, ids, labels, ndevices, train=False, comm=comm)
    rows: list[dict[str, Any]] = []
    runs = {"dp": "dp", "tp": "tp", "coshard(k=2)": "coshard", f"pp(infer,m={ndevices})": "pp"}
    for cand in found.candidates:
        if cand.name not in runs or cand.estimate is None:
            continue
        micro = ndevices if cand.family == "pp" else None
        got = verify(
            model_spec, runs[cand.name], ndevices, batch=batch, seq=seq, micro_batches=micro
        )
        rows.append(
            {
                "plan": cand.name,
                "predicted_seconds": cand.estimate.seconds,
                "measured_seconds": got.seconds_parallel,
                "ratio": cand.estimate.seconds / got.seconds_parallel,
                "ok": got.ok,
            }
        )
    by_pred = [r["plan"] for r in sorted(rows, key=lambda r: r["predicted_seconds"])]
    by_meas = [r["plan"] for r in sorted(rows, key=lambda r: r["measured_seconds"])]
    return {
        "model": model_spec,
        "devices": ndevices,
        "alpha": comm.alpha,
        "beta": comm.beta,
        "rows": rows,
        "same_order": by_pred == by_meas,
        "order_predicted": by_pred,
        "order_measured": by_meas,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m agentrt.parallelism.calibrate")
    parser.add_argument("--model", default="tiny-llama")
    parser.add_argument("--devices", type=int, default=2)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--seq", type=int, default=8)
    parser.add_argument("--json", default=None)
    args = parser.parse_args(argv)
    report = calibrate(args.model, args.devices, args.batch, args.seq)
    out = sys.stdout
    out.write(f"alpha {report['alpha'] * 1e6:.1f} us, beta {report['beta'] / 1e9:.2f} GB/s\n")
    for r in report["rows"]:
        out.write(
            f"{r['plan']:<14} predicted {r['predicted_seconds'] * 1e3:8.2f} ms  measured "
            f"{r['measured_seconds'] * 1e3:8.2f} ms  ratio {r['ratio']:.2f}\n"
        )
    out.write(
        f"same order: {report['same_order']} (predicted {report['order_predicted']}, "
        f"measured {report['order_measured']})\n"
    )
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
