"""``agentrt plan``: build the shipped parallel plans for a model and N devices, and optionally run them.

Prints, per plan, the collectives phase 3 inserted, their predicted time
under the alpha-beta model and the parameter bytes each device holds;
``--verify`` runs the plan on N local gloo processes against one device.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model", required=True, help="tiny-llama | tiny-gpt | a transformers model folder"
    )
    parser.add_argument("--devices", type=int, required=True, help="number of devices to plan for")
    parser.add_argument(
        "--plan",
        default="all",
        help="auto (search, ranked by the cost model) | dp | tp | coshard | pp | gpipe | 1f1b | 3d | interlaced | all "
        "(default: every shipped plan with its collectives)",
    )
    parser.add_argument(
        "--memory-per-device",
        default=None,
        metavar="SIZE",
        help="memory limit per device for --plan auto, e.g. 8GiB, 512MiB",
    )
    parser.add_argument(
        "--profile",
        default=None,
        metavar="NAME_OR_JSON",
        help="price operators and collectives for a device profile (a100-80gb-x8, v100-32gb-x32 or a JSON file) "
        "instead of measuring this machine",
    )
    parser.add_argument("--batch", type=int, default=4, help="example batch size (default 4)")
    parser.add_argument("--seq", type=int, default=8, help="example sequence length (default 8)")
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument(
        "--train",
        action="store_true",
        help="plan a training step (loss, backward) instead of a forward",
    )
    mode.add_argument("--serve", action="store_true", help="plan a forward (the default)")
    parser.add_argument(
        "--verify",
        action="store_true",
        help="run each plan on N local gloo processes and compare with one device",
    )
    parser.add_argument(
        "--dtype",
        default="float32",
        choices=["float32", "float64"],
        help="dtype of the --verify run (float64 separates plan errors from rounding on deep models)",
    )
    parser.add_argument(
        "--json", default=None, metavar="PATH", help="also write the report as JSON"
    )


def _fmt_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _report(args: argparse.Namespace) -> dict[str, Any]:
    from agentrt.parallelism.errors import ParallelError
    from agentrt.parallelism.graph import capture
    from agentrt.parallelism.launch import example_inputs, load_model, vocab_of
    from agentrt.parallelism.models import Logits, NextTokenLoss
    from agentrt.parallelism.pipeline import PIPELINE_PLANS
    from agentrt.parallelism.plans import PLANS

    if args.devices < 1:
        raise ParallelError(f"--devices must be at least 1, got {args.devices}")
    shipped = [*PLANS, *PIPELINE_PLANS]
    names = shipped if args.plan == "all" else [args.plan]
    for name in names:
        if name not in shipped:
            raise ParallelError(f"unknown plan {name!r}; shipped plans: {', '.join(shipped)}")
    model = load_model(args.model)
    inputs = example_inputs(vocab_of(model), args.batch, args.seq, 0)
    wrapper = NextTokenLoss(model) if args.train else Logits(model)
    graph = capture(wrapper, inputs if args.train else inputs[:1])
    report: dict[str, Any] = {
        "model": args.model,
        "devices": args.devices,
        "train": args.train,
        "operators": len(graph.ops),
        "replicated_unknown_operators": graph.unknown,
        "plans": [],
    }
    if args.serve:
        from agentrt.parallelism.serving import engine_split

        report["engine_serving"] = engine_split(getattr(model, "config", None), args.devices)
    for name in names:
        entry: dict[str, Any] = {"plan": name}
        try:
            if name in PIPELINE_PLANS:
                entry.update(_pipeline_entry(name, model, inputs[0], args))
            else:
                entry.update(_spmd_entry(name, graph, args))
            if args.verify:
                entry["verify"] = _verified(name, args)
        except ParallelError as exc:
            entry["error"] = str(exc)
        report["plans"].append(entry)
    if all("error" in p for p in report["plans"]):
        raise ParallelError("; ".join(f"{p['plan']}: {p['error']}" for p in report["plans"]))
    return report


def _spmd_entry(name: str, graph: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A plan that runs every operator on every device: its split operators and collectives."""
    from agentrt.parallelism.comm import lower
    from agentrt.parallelism.plans import PLANS

    program = lower(PLANS[name](graph, args.devices))
    return {
        "split_operators": sum(1 for op in graph.ops if program.plan.transform_of(op) is not None),
        "collectives": program.collectives(train=args.train),
        "predicted_comm_seconds": program.comm_seconds(train=args.train),
        "param_bytes_per_device": program.param_bytes(),
    }


def _verified(name: str, args: argparse.Namespace) -> dict[str, Any]:
    """``name`` run on ``--devices`` local gloo processes against one device."""
    import torch

    from agentrt.parallelism.launch import verify

    return verify(
        args.model,
        name,
        args.devices,
        train=args.train,
        batch=args.batch,
        seq=args.seq,
        dtype=getattr(torch, args.dtype),
    ).as_dict()


def _pipeline_entry(name: str, model: Any, ids: Any, args: argparse.Namespace) -> dict[str, Any]:
    """A pipeline plan is built on the model captured at the micro-batch size."""
    from agentrt.parallelism.comm import lower
    from agentrt.parallelism.graph import capture
    from agentrt.parallelism.launch import default_micro_batches
    from agentrt.parallelism.models import Logits
    from agentrt.parallelism.pipeline import pipeline_plan

    nmicro = default_micro_batches(args.batch, args.devices)
    graph = capture(Logits(model), (ids[: args.batch // nmicro],))
    if name == "interlaced":
        return _interlaced_entry(graph, nmicro, args)
    built = pipeline_plan(name, graph, args.devices, nmicro=nmicro, train=args.train)
    inner = [lower(p) for p in built.inner] if built.inner is not None else None
    sends = {t for spec in built.specs[:-1] for t in spec.outputs}
    return {
        "stages": len(built.specs),
        "devices_per_stage": built.width,
        "micro_batches": nmicro,
        "schedule": built.plan.pipe.kind if built.plan.pipe is not None else None,
        "split_operators": sum(
            1 for p in inner or [] for op in p.plan.graph.ops if p.plan.transform_of(op) is not None
        ),
        "collectives": {
            "send/recv": len(sends) * nmicro * (2 if args.train else 1),
            **{k: v for p in inner or [] for k, v in p.collectives(train=args.train).items()},
        },
        "predicted_comm_seconds": sum(p.comm_seconds(train=args.train) for p in inner or [])
        * nmicro,
        "param_bytes_per_device": max(
            (p.param_bytes() for p in inner)
            if inner is not None
            else (sum(graph.tensors[n].nbytes for n in s.state) for s in built.specs)
        ),
    }


def _interlaced_entry(graph: Any, nmicro: int, args: argparse.Namespace) -> dict[str, Any]:
    from agentrt.parallelism.interlaced import interlaced_for

    built = interlaced_for(graph, args.devices, nmicro=nmicro, train=args.train)
    collectives: dict[str, int] = {}
    for p in (built.embed, built.head):
        for k, v in p.collectives(train=args.train).items():
            collectives[k] = collectives.get(k, 0) + v * nmicro
    if built.vocab_loss:  # the loss's maximum and its sums, per micro-batch
        collectives["all-reduce"] = collectives.get("all-reduce", 0) + 2 * nmicro
    sends = {t for spec in built.body[:-1] for t in spec.outputs}
    collectives["send/recv"] = len(sends) * nmicro * (2 if args.train else 1)
    collectives["broadcast"] = len(built.head_in) * nmicro * (2 if args.train else 1)
    return {
        "stages": len(built.body),
        "devices_per_stage": 1,
        "micro_batches": nmicro,
        "schedule": "interlaced",
        "split_operators": sum(
            1
            for p in (built.embed, built.head)
            for op in p.plan.graph.ops
            if p.plan.transform_of(op)
        ),
        "collectives": collectives,
        "predicted_comm_seconds": nmicro
        * (built.embed.comm_seconds(train=args.train) + built.head.comm_seconds(train=args.train)),
        "param_bytes_per_device": built.embed.param_bytes()
        + built.head.param_bytes()
        + max(sum(graph.tensors[n].nbytes for n in s.state) for s in built.body),
    }


def _print(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False, markup=False)
    mode = "training step" if report["train"] else "forward"
    console.print(
        f"{report['model']} on {report['devices']} devices ({mode}, {report['operators']} operators)"
    )
    if report["replicated_unknown_operators"]:
        console.print(
            f"replicated (no annotation): {', '.join(report['replicated_unknown_operators'])}"
        )
    serving = report.get("engine_serving")
    if serving is not None:
        n = serving["tensor_parallel_size"]
        if "error" in serving:
            console.print(
                f"agentrt serve --tensor-parallel-size {n}: not possible: {serving['error']}"
            )
        else:
            console.print(
                f"agentrt serve --tensor-parallel-size {n} (the tp plan's Megatron split on the "
                f"engine's decoder): query heads {'+'.join(map(str, serving['heads']))}, "
                f"KV heads {'+'.join(map(str, serving['kv_heads']))}, "
                f"MLP units {'+'.join(map(str, serving['mlp']))} per rank"
            )
    header = f"{'plan':<5} {'split ops':>9} {'comm (pred.)':>12} {'params/dev':>11}  collectives"
    console.print(header)
    for p in report["plans"]:
        if "error" in p:
            console.print(f"{p['plan']:<5} error: {p['error']}")
            continue
        coll = ", ".join(f"{k} x{v}" for k, v in sorted(p["collectives"].items())) or "none"
        console.print(
            f"{p['plan']:<5} {p['split_operators']:>9} {p['predicted_comm_seconds'] * 1e3:>9.2f} ms {_fmt_bytes(p['param_bytes_per_device']):>11}  {coll}"
        )
        v = p.get("verify")
        if v:
            verdict = "OK" if v["ok"] else "MISMATCH"
            console.print(
                f"      verify ({v['dtype']}): {verdict} logits err {v['max_output_error']:.2e} ({v['max_output_rel_error']:.1e} of the largest), loss err {v['loss_error']:.2e}, "
                f"grad err {v['max_grad_error']:.2e} (atol {v['atol']:.0e}); step {v['seconds_parallel'] * 1e3:.1f} ms vs {v['seconds_single'] * 1e3:.1f} ms on one process"
            )


_UNITS = {"": 1, "b": 1, "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_UNITS |= {"kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12}


def parse_size(text: str) -> int:
    """``8GiB``, ``512MiB``, ``1.5GB`` or a byte count."""
    from agentrt.parallelism.errors import ParallelError

    raw = text.strip().lower().replace(" ", "")
    number = raw.rstrip("kmgtib")
    unit = raw[len(number) :]
    try:
        value = float(number) * _UNITS[unit]
    except (KeyError, ValueError):
        raise ParallelError(
            f"cannot read the memory size {text!r}: write e.g. 8GiB or 512MiB"
        ) from None
    if value <= 0:
        raise ParallelError(f"the memory per device must be positive, got {text!r}")
    return int(value)


def _auto_report(args: argparse.Namespace) -> dict[str, Any]:
    from agentrt.parallelism.cost import load_profile, measured_comm
    from agentrt.parallelism.errors import ParallelError
    from agentrt.parallelism.launch import example_inputs, load_model, vocab_of
    from agentrt.parallelism.search import search

    if args.devices < 1:
        raise ParallelError(f"--devices must be at least 1, got {args.devices}")
    limit = parse_size(args.memory_per_device) if args.memory_per_device else None
    profile = load_profile(args.profile) if args.profile else None
    if profile is not None and args.devices > profile.devices:
        raise ParallelError(
            f"--devices {args.devices} is more than the profile's {profile.devices} ({profile.name})"
        )
    comm, samples = (None, []) if profile is not None else measured_comm(2)
    model = load_model(args.model)
    ids, labels = example_inputs(vocab_of(model), args.batch, args.seq, 0)
    found = search(
        model,
        ids,
        labels,
        args.devices,
        train=args.train,
        memory_limit=limit,
        profile=profile,
        comm=comm,
    )
    best = found.best
    return {
        "model": args.model,
        "devices": args.devices,
        "train": args.train,
        "memory_per_device": limit,
        "profile": profile.name if profile is not None else "this machine (measured)",
        "comm": {"alpha": comm.alpha, "beta": comm.beta, "allreduce_samples": samples}
        if comm is not None
        else None,
        "chosen": best.name,
        "plans": [c.as_dict() for c in found.ranked]
        + [c.as_dict() for c in found.candidates if c.estimate is None],
    }


def _print_auto(report: dict[str, Any]) -> None:
    from rich.console import Console

    console = Console(width=None if sys.stdout.isatty() else 200, highlight=False, markup=False)
    mode = "training step" if report["train"] else "forward"
    limit = report["memory_per_device"]
    console.print(
        f"{report['model']} on {report['devices']} devices ({mode}; {report['profile']}"
        + (f"; limit {_fmt_bytes(limit)} per device" if limit else "")
        + ")"
    )
    console.print(f"chosen: {report['chosen']}")
    console.print(
        f"{'plan':<22} {'step (pred.)':>12} {'compute':>10} {'comm':>10} {'memory/dev':>11}"
    )
    for p in report["plans"]:
        if "error" in p:
            console.print(f"{p['plan']:<22} not applicable: {p['error']}")
            continue
        mark = "" if p["fits"] else "  over the limit"
        console.print(
            f"{p['plan']:<22} {p['predicted_step_seconds'] * 1e3:>9.2f} ms {p['predicted_compute_seconds'] * 1e3:>7.2f} ms "
            f"{p['predicted_comm_seconds'] * 1e3:>7.2f} ms {_fmt_bytes(p['memory_bytes_per_device']):>11}{mark}"
        )


def run(args: argparse.Namespace) -> int:
    from agentrt.parallelism.errors import ParallelError

    auto = args.plan == "auto"
    try:
        if not auto and (args.memory_per_device or args.profile):
            raise ParallelError("--memory-per-device and --profile apply to --plan auto")
        report = _auto_report(args) if auto else _report(args)
    except ParallelError as exc:
        from rich.console import Console

        Console(stderr=True, highlight=False, markup=False, soft_wrap=True).print(
            f"agentrt plan: error: {exc}"
        )
        return 2
    if auto:
        _print_auto(report)
    else:
        _print(report)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(report, fh, indent=2)
    failed = any(not p.get("verify", {"ok": True})["ok"] for p in report["plans"])
    return 1 if failed else 0
