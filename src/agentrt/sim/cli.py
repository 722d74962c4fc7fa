"""``agentrt sim``: simulate policies over arrival rates; ``agentrt sim fit``: fit a profile.

    agentrt sim --workload mixed --policies fcfs,mlfq,plas,atlas --json out.json
    agentrt sim --workload sharegpt --engines 4 --balancer round_robin,locality
    agentrt sim fit BENCH.json -o PROFILE.toml

Prints a table per run (latency mean/p50/p95/p99, token latency, throughput,
wait breakdown, preemptions and swaps, Jain's fairness) and the headline
"throughput at equal mean latency" of each policy against FCFS; ``--json``
writes the whole :class:`~agentrt.sim.sweep.SweepReport`, ``--plot`` a PNG of
mean latency against arrival rate, one line per policy.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from agentrt.scheduling.config import POLICIES
from agentrt.scheduling.retention import RETENTION_MODES
from agentrt.sim.simulator import ORACLES

if TYPE_CHECKING:
    from rich.console import Console


def _csv(text: str) -> list[str]:
    return [part.strip() for part in text.split(",") if part.strip()]


def _choices(allowed: tuple[str, ...]) -> Callable[[str], list[str]]:
    def parse(text: str) -> list[str]:
        values = _csv(text)
        unknown = [v for v in values if v not in allowed]
        if unknown or not values:
            raise argparse.ArgumentTypeError(
                f"unknown {', '.join(unknown) or 'empty list'}; choose from {','.join(allowed)}"
            )
        return values

    return parse


def _rates(text: str) -> list[float]:
    try:
        rates = [float(x) for x in _csv(text)]
    except ValueError as e:
        raise argparse.ArgumentTypeError(f"rates must be numbers: {text!r}") from e
    if not rates or any(r <= 0 for r in rates):
        raise argparse.ArgumentTypeError("rates must be positive")
    return rates


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from agentrt.sim.workloads import WORKLOADS

    parser.add_argument("--workload", default="mixed", choices=WORKLOADS)
    parser.add_argument(
        "--policies",
        type=_choices(POLICIES),
        default=["fcfs", "mlfq", "plas", "atlas"],
        help="comma-separated: fcfs,las,mlfq,plas,atlas",
    )
    parser.add_argument(
        "--rates",
        type=_rates,
        default=None,
        help="program arrival rates (programs/s), comma-separated; default: "
        "a sweep around the estimated capacity of the profile",
    )
    parser.add_argument(
        "--programs",
        type=int,
        default=None,
        help="programs per run (default: 1000; mixed and lats: 300)",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--profile", default="a100-llama3-8b", help="shipped profile name or TOML path"
    )
    parser.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="change a field of the profile for this run, e.g. --set max_batch_size=32 (repeatable)",
    )
    parser.add_argument("--engines", type=int, default=1)
    parser.add_argument(
        "--balancer",
        type=_choices(("round_robin", "least_used", "locality")),
        default=["locality"],
        help="comma-separated: round_robin,least_used,locality (one sweep each)",
    )
    parser.add_argument(
        "--config", type=Path, default=None, help="TOML file with [scheduler] and [sim] tables"
    )
    parser.add_argument("--steps-per-schedule", type=int, default=None)
    parser.add_argument("--preemption", choices=["auto", "swap", "recompute"], default=None)
    parser.add_argument(
        "--kv-retention",
        type=_choices(RETENTION_MODES),
        default=None,
        help="off|ttl, or off,ttl to compare both (default: [sim] kv_retention, off): ttl pins "
        "a program's KV across its tool calls and evicts by expected reuse instead of LRU",
    )
    parser.add_argument(
        "--oracle",
        type=_choices(ORACLES),
        default=None,
        help="none|remaining|kind, comma-separated to compare (default: [sim] oracle, none): "
        "rank calls by their program's decode tokens left or its kind's mean, which no "
        "scheduler knows, to bound what an order can gain",
    )
    parser.add_argument(
        "--latency-target",
        type=float,
        default=None,
        help="seconds of mean program latency for the headline (default: "
        "--target-factor x FCFS's mean latency at the lowest rate)",
    )
    parser.add_argument(
        "--token-latency-target",
        type=float,
        default=None,
        help="seconds per generated token (the paper's program-level token latency) for the "
        "second headline (default: --target-factor x FCFS's at the lowest rate)",
    )
    parser.add_argument("--target-factor", type=float, default=None)
    parser.add_argument("--json", type=Path, default=None, help="write the report here")
    parser.add_argument("--plot", type=Path, default=None, help="write a latency-vs-rate PNG here")
    sub = parser.add_subparsers(dest="sim_command", metavar="fit")
    fit = sub.add_parser(
        "fit", help="fit an engine profile to `agentrt bench engine --json` output"
    )
    fit.add_argument("bench", type=Path, help="the engine benchmark's JSON")
    fit.add_argument("-o", "--output", type=Path, required=True, help="profile TOML to write")
    fit.add_argument(
        "--base",
        default="a100-llama3-8b",
        help="profile (name or TOML) whose capacities are kept unless the bench or --set gives them",
    )
    fit.add_argument(
        "--set",
        dest="settings",
        action="append",
        default=[],
        metavar="FIELD=VALUE",
        help="a capacity of the fitted engine, e.g. --set kv_blocks=1559 (repeatable)",
    )
    fit.add_argument("--name", default=None, help="profile name (default: the output file's stem)")


def run(args: argparse.Namespace) -> int:
    if args.sim_command == "fit":
        return _fit(args)
    return _sweep(args)


def _console() -> Console:
    from rich.console import Console

    # Wide enough for the results table when the output is a file or a pipe.
    return Console(width=None if sys.stdout.isatty() else 160)


def _settings(items: list[str]) -> dict[str, object]:
    """``--set FIELD=VALUE`` items (TOML values) as a dict."""
    import tomllib

    settings: dict[str, object] = {}
    for item in items:
        field, sep, value = item.partition("=")
        if not sep:
            raise SystemExit(f"--set needs FIELD=VALUE, got {item!r}")
        try:
            settings[field.strip()] = tomllib.loads(f"v = {value.strip()}")["v"]
        except tomllib.TOMLDecodeError as e:
            raise SystemExit(f"--set {item!r}: not a TOML value ({e})") from e
    return settings


def _fit(args: argparse.Namespace) -> int:
    from agentrt.sim.fit import fit_profile
    from agentrt.sim.profile import dump_profile, load_profile

    settings = _settings(args.settings)
    try:
        profile, result = fit_profile(
            args.bench, load_profile(args.base), args.name or args.output.stem, settings
        )
    except ValueError as e:
        raise SystemExit(f"agentrt sim fit: {e}") from e
    header = (
        f"Fitted by `agentrt sim fit {args.bench.name}` from {result.steps} engine steps "
        f"(non-negative least squares, R^2 = {result.r2:.4f}).\n"
        f"Capacities: {', '.join(f'{k}={v}' for k, v in settings.items()) or 'none given'}; "
        f"the rest from {args.base}."
    )
    args.output.write_text(dump_profile(profile, header))
    console = _console()
    for term, value in result.coefficients.items():
        console.print(f"{term:>16} = {value:.4g}")
    console.print(f"R^2 = {result.r2:.4f} over {result.steps} steps; wrote {args.output}")
    return 0


def _sweep(args: argparse.Namespace) -> int:
    import msgspec
    from rich.progress import Progress

    from agentrt.config import load_config
    from agentrt.scheduling import SchedulerConfig
    from agentrt.sim.profile import load_profile, with_settings
    from agentrt.sim.report import headline_table, plot_latency, points_table
    from agentrt.sim.simulator import SimConfig
    from agentrt.sim.sweep import DEFAULT_TARGET_FACTOR, default_rates, run_sweep
    from agentrt.sim.workloads import make_workload

    console = _console()
    try:
        profile = with_settings(load_profile(args.profile), _settings(args.settings))
    except ValueError as e:
        raise SystemExit(f"agentrt sim: {e}") from e
    scheduler = load_config(SchedulerConfig, args.config, "scheduler")
    sim = load_config(
        SimConfig,
        args.config,
        "sim",
        {
            "engines": args.engines,
            "steps_per_schedule": args.steps_per_schedule,
            "preemption": args.preemption,
            "kv_retention": args.kv_retention[0] if args.kv_retention else None,
            "oracle": args.oracle[0] if args.oracle else None,
        },
    )
    n = args.programs or (300 if args.workload in ("mixed", "lats") else 1000)
    workload = make_workload(args.workload, max_context=profile.max_model_len)
    programs = workload.generate(n, args.seed)
    rates = args.rates or default_rates(programs, profile, sim.engines)
    retentions = args.kv_retention or [sim.kv_retention]
    oracles = args.oracle or [sim.oracle]
    total = len(rates) * len(args.policies) * len(args.balancer) * len(retentions) * len(oracles)
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task(f"simulating {args.workload}", total=total)
        report = run_sweep(
            args.workload,
            programs,
            profile,
            scheduler,
            sim,
            args.policies,
            args.balancer,
            rates,
            args.seed,
            args.latency_target,
            args.target_factor or DEFAULT_TARGET_FACTOR,
            on_point=lambda point: progress.advance(task),
            token_latency_target=args.token_latency_target,
            retentions=retentions,
            oracles=oracles,
        )
    console.print(points_table(report))
    console.print(headline_table(report))
    if args.json:
        args.json.write_bytes(msgspec.json.format(msgspec.json.encode(report)))
        console.print(f"wrote {args.json}")
    if args.plot:
        plot_latency(report, args.plot)
        console.print(f"wrote {args.plot}")
    return 0
