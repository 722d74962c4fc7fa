"""``agentrt bench serve``: drive one server with agent programs and report program-level latency.

Programs from the reference agents (``react``, ``chat``, ``tree_search``,
``mcts``, ``map_reduce`` or the paper's ``mixed``) arrive as a Poisson process
at ``--rate`` programs/s, or at each rate of a sweep ``--rates a:b:step``,
against ``--base-url`` (any OpenAI-compatible server) or ``--embedded`` (an
agentrt server in this process). Prints a table, writes ``--json`` and plots
latency against arrival rate with ``--plot``.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import msgspec

from agentrt.bench.program_metrics import ProgramResult, RunSummary
from agentrt.log import get_logger
from agentrt.scheduling.config import POLICIES

log = get_logger(__name__)
T = TypeVar("T")

WORKLOAD_CHOICES = ("react", "chat", "tree_search", "mcts", "map_reduce", "mixed")


class SystemResult(msgspec.Struct, kw_only=True):
    """One system's sweep: a summary per rate, and every program's figures."""

    label: str
    base_url: str
    model: str
    runs: list[RunSummary]
    programs: list[list[ProgramResult]]  # programs[i]: the programs of runs[i]


class BenchResult(msgspec.Struct, kw_only=True):
    command: list[str]
    workload: str
    size: str = "full"
    tool_policy: str = "model"  # the ReAct programs': model or scripted (``--tool-policy``)
    seed: int
    num_programs: int | None
    duration: float | None
    systems: list[SystemResult]
    comparison: Any = None  # filled by ``bench compare``: at equal mean program latency
    token_comparison: Any = None  # ... and at equal mean program-level token latency
    predictions: Any = None  # the simulator's, with ``bench compare --simulate``


# Fields that hold NaN when a run had nothing to measure; JSON writes NaN as null.
_MAYBE_NAN = {"mean", "p50", "p95", "p99", "wait_share", "fairness", "prompt_tokens_per_call",
              "completion_tokens_per_call"}


def _nan_for_null(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: (math.nan if v is None and k in _MAYBE_NAN else _nan_for_null(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [_nan_for_null(v) for v in value]
    return value


def load_result(path: str) -> BenchResult:
    """A saved ``--json`` result, with the NaNs that JSON turned into nulls restored."""
    with open(path, "rb") as f:
        return msgspec.convert(_nan_for_null(msgspec.json.decode(f.read())), BenchResult)


def parse_rates(text: str) -> list[float]:
    """``a:b:step`` (inclusive) or a comma list ``a,b,c`` -> ascending rates."""
    try:
        if ":" in text:
            lo, hi, step = (float(x) for x in text.split(":"))
            if step <= 0 or hi < lo:
                raise ValueError
            count = round((hi - lo) / step) + 1
            rates = [round(lo + i * step, 10) for i in range(count)]
        else:
            rates = [float(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a:b:step or a,b,c with positive rates, got {text!r}") from None
    if not rates or min(rates) <= 0:
        raise argparse.ArgumentTypeError(f"rates must be positive, got {text!r}")
    return sorted(set(rates))


def add_workload_arguments(parser: argparse.ArgumentParser) -> None:
    """The flags that define the offered load (shared with ``bench compare``)."""
    from agentrt.agents import SIZES, TOOL_POLICIES

    parser.add_argument("--workload", choices=WORKLOAD_CHOICES, default="mixed")
    rates = parser.add_mutually_exclusive_group()
    rates.add_argument("--rate", type=float, default=None, help="program arrival rate (programs/s)")
    rates.add_argument("--rates", type=parse_rates, default=None, help="sweep: a:b:step or a,b,c")
    parser.add_argument("--duration", type=float, default=None, help="arrivals stop after this many seconds")
    parser.add_argument("--num-programs", type=int, default=None, help="programs per rate (default 20 without --duration)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--size", choices=tuple(SIZES), default="full",
                        help="program sizes: full (the paper's shapes), small (same shapes, fewer/shorter calls) "
                        "or varied (small's calls, programs as unequal in length as the paper's)")
    parser.add_argument(
        "--tool-policy", choices=TOOL_POLICIES, default="model",
        help="ReAct programs: run the tools the model calls (model), or each BFCL task's ground-truth "
        "calls whatever the model writes, with the simulator's tool latencies (scripted: for models "
        "too small to call tools)",
    )
    parser.add_argument(
        "--ignore-eos", action=argparse.BooleanOptionalAction, default=True,
        help="decode exactly max_tokens per call (servers that accept vLLM's ignore_eos), so every "
        "system does the same work",
    )
    parser.add_argument("--timeout", type=float, default=None, help="cap on one rate's run (seconds)")
    parser.add_argument("--json", default=None, metavar="FILE", help="write the results as JSON")
    parser.add_argument("--plot", default=None, metavar="FILE.png", help="plot latency against arrival rate")
    parser.add_argument("--no-progress", action="store_true", help="no live progress bar")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    target = parser.add_mutually_exclusive_group()
    target.add_argument("--base-url", default=None, help="an OpenAI-compatible server (…/v1)")
    target.add_argument("--embedded", action="store_true", help="an agentrt server in this process (default model)")
    parser.add_argument("--model", default=None, help="model name (default: the server's first)")
    parser.add_argument("--api-key", default="EMPTY")
    parser.add_argument("--label", default=None, help="name of this system in the report")
    parser.add_argument("--scheduling-policy", default=None, help="with --embedded: " + "|".join(POLICIES))
    add_workload_arguments(parser)


def rates_of(args: argparse.Namespace) -> list[float]:
    return args.rates or [args.rate if args.rate is not None else 0.5]


def validate(args: argparse.Namespace) -> str | None:
    if args.num_programs is not None and args.num_programs < 1:
        return "--num-programs must be at least 1"
    if args.duration is not None and args.duration <= 0:
        return "--duration must be positive"
    if args.rate is not None and args.rate <= 0:
        return "--rate must be positive"
    return None


async def run_rate(target: Any, args: argparse.Namespace, rate: float, progress: Any) -> tuple[RunSummary, list[ProgramResult]]:
    """One run: the seeded programs arriving at ``rate`` against ``target`` (the same programs at every rate)."""
    from agentrt.agents import sample_programs
    from agentrt.bench.load import programs_for, run_programs, unit_arrivals

    num_programs = args.num_programs if args.num_programs is not None or args.duration else 20
    count = programs_for(args.duration, num_programs, rate, args.seed)
    specs = sample_programs(args.workload, count, args.seed, args.size, args.tool_policy)
    arrivals = [t / rate for t in unit_arrivals(count, args.seed)]
    task = progress.start(f"{target.label} @ {rate:g}/s", count)
    result = await run_programs(
        target, specs, arrivals, rate=rate, on_done=lambda r: progress.advance(task, r), time_limit=args.timeout
    )
    progress.finish(task)
    return result


async def sweep_targets(targets: list[Any], args: argparse.Namespace, progress: Any) -> list[SystemResult]:
    """Every rate against every target, interleaved (rate by rate, each target in turn), so that
    drift in the machine's background load falls on all targets alike."""
    from agentrt.bench.load import warm_up

    for target in targets:
        await warm_up(target)
    systems = [SystemResult(label=t.label, base_url=t.base_url, model=t.model, runs=[], programs=[])
               for t in targets]
    began = time.monotonic()
    for rate in rates_of(args):
        for target, system in zip(targets, systems, strict=True):
            started = time.monotonic() - began
            if target.queue_metrics:
                from agentrt.bench.engine_queue import sampled

                async with sampled(target.queue_metrics) as queue:
                    summary, results = await run_rate(target, args, rate, progress)
                summary.engine_queue = queue.summary()
            else:
                summary, results = await run_rate(target, args, rate, progress)
            summary.started = started
            system.runs.append(summary)
            system.programs.append(results)
            system.model = target.model
    return systems


async def interruptible(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """``await fn(*args)``, stopped by Ctrl-C or SIGTERM: the run is cancelled (its programs
    with it; programs in worker threads are abandoned) and :class:`KeyboardInterrupt` is
    raised once it has unwound, so the caller's servers are stopped on the way out.

    Without this the event loop turns SIGINT into a cancellation that the sweep absorbs
    and the benchmark goes on against servers the same Ctrl-C has stopped."""
    import signal

    import anyio

    interrupted = False
    result: list[T] = []
    async with anyio.create_task_group() as tg:

        async def watch() -> None:
            nonlocal interrupted
            with anyio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
                async for signum in signals:
                    log.warning("interrupted: stopping the benchmark", signal=signum.name)
                    interrupted = True
                    tg.cancel_scope.cancel()
                    return

        async def main() -> None:
            result.append(await fn(*args))
            tg.cancel_scope.cancel()

        tg.start_soon(watch)
        tg.start_soon(main)
    if interrupted or not result:
        raise KeyboardInterrupt
    return result[0]


async def sweep_target(target: Any, args: argparse.Namespace, progress: Any) -> SystemResult:
    """Run the seeded workload against ``target`` at every rate."""
    [system] = await sweep_targets([target], args, progress)
    return system


def write_outputs(result: BenchResult, args: argparse.Namespace, console: Any) -> None:
    from agentrt.bench.serve_report import plot_latency

    if args.json:
        with open(args.json, "wb") as f:
            f.write(msgspec.json.format(msgspec.json.encode(result), indent=1))
        console.print(f"wrote {args.json}")
    if args.plot:
        plot_latency(result.systems, args.plot, title=f"{result.workload} workload")
        console.print(f"wrote {args.plot}")


def run(args: argparse.Namespace) -> int:
    import anyio

    from agentrt.bench.load import Target
    from agentrt.bench.serve_report import Progress, print_kv, print_runs, report_console

    console = report_console()
    problem = validate(args)
    if problem:
        console.print(f"[red]error:[/red] {problem}")
        return 2
    extra = {"ignore_eos": True} if args.ignore_eos else {}
    if args.embedded or args.base_url is None:
        target = embedded_target(args, extra)
    else:
        target = Target(label=args.label or args.base_url, base_url=args.base_url, model=args.model or "",
                        api_key=args.api_key, extra_body=extra)
    try:
        with Progress(enabled=not args.no_progress) as progress:
            system = anyio.run(interruptible, sweep_target, target, args, progress)
    finally:
        if target.app is not None:
            from agentrt.serving.inprocess import AppRunner

            AppRunner.for_app(target.app).close()
    result = BenchResult(command=sys.argv, workload=args.workload, size=args.size, tool_policy=args.tool_policy,
                         seed=args.seed,
                         num_programs=args.num_programs, duration=args.duration, systems=[system])
    print_runs(console, result.systems)
    print_kv(console, result.systems)
    write_outputs(result, args, console)
    return 0 if all(r.errors == r.cut == 0 for r in system.runs) else 1


def embedded_target(args: argparse.Namespace, extra: dict[str, Any]) -> Any:
    """A :class:`Target` on an agentrt app served in this process (the embedded default model)."""
    import agentrt
    from agentrt.bench.load import Target
    from agentrt.sdk.openai_clients import IN_PROCESS_BASE_URL
    from agentrt.serving.config import ServerConfig

    policy = args.scheduling_policy or ServerConfig().scheduling_policy
    app = agentrt.serve_in_process(ServerConfig(scheduling_policy=policy))
    return Target(label=args.label or f"embedded/{policy}", base_url=IN_PROCESS_BASE_URL, model=args.model or "",
                  extra_body=extra, app=app)
