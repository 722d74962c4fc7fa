"""``agentrt bench compare``: several systems, the same seeded agent workload, one command.

Starts ``agentrt serve`` once per ``--policies`` entry (each on a free
loopback port, all up for the whole sweep), adds any
``--external NAME=URL[#MODEL]`` server (vLLM, SGLang, ``transformers serve``,
llama.cpp's server) and, with ``--llama-server PATH``, a llama.cpp server it
starts fresh per rate with as many slots as agentrt's batch (with
``--llama-front POLICIES``, also agentrt in front of another freshly started
one per policy: the engine alone against the same engine behind agentrt's
admission, with the engine's own queue occupancy measured), runs the same
rate sweep against each, rate by rate with the systems taking turns (only
one is loaded at a time; interleaving spreads drift in the machine's
background load over all of them), and reports each
system's throughput at equal mean latency as a ratio against the first
system (Autellix's headline metric), with p95 latency at the baseline's load;
once on mean program latency and once on the paper's program-level token
latency (the second weighs the short programs, see :mod:`agentrt.sim.sweep`).
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import os
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import msgspec

from agentrt.bench import llama_server
from agentrt.bench.program_metrics import AtLatency, interpolate, rate_at_latency
from agentrt.bench.serve import BenchResult, SystemResult, add_workload_arguments, validate
from agentrt.log import get_logger
from agentrt.scheduling.config import POLICIES
from agentrt.sim.sweep import LatencyMetric

log = get_logger(__name__)


class ServerStartError(RuntimeError):
    """An ``agentrt serve`` subprocess exited or never became healthy; the message has its log tail."""


class ComparisonRow(msgspec.Struct, kw_only=True):
    label: str
    rate_at_target: AtLatency
    ratio: float | None  # throughput at the target / the baseline's; None when undefined
    ratio_bound: str  # "=", ">=" (this system met the target at every swept rate), "<=", "?"
    mean_at_baseline_rate: float
    p95_at_baseline_rate: float


class Comparison(msgspec.Struct, kw_only=True):
    baseline: str
    latency_target: float  # in the metric's unit: s, or s per generated token
    rows: list[ComparisonRow]  # their mean/p95 columns are in the metric too
    metric: LatencyMetric = "latency"


def parse_external(text: str) -> tuple[str, str, str]:
    """``NAME=URL[#MODEL]`` -> (name, url, model)."""
    name, sep, rest = text.partition("=")
    if not sep or not name or not rest.startswith(("http://", "https://")):
        raise argparse.ArgumentTypeError(f"expected NAME=URL[#MODEL] with an http(s) URL, got {text!r}")
    url, _, model = rest.partition("#")
    return name, url, model


def split_config(entry: str) -> tuple[str, str | None]:
    """``HEAD[:CONFIG.toml]`` -> (head, the config file or None)."""
    head, colon, config = entry.partition(":")
    if colon and not config:
        raise argparse.ArgumentTypeError(f"expected POLICY:CONFIG.toml with a file after ':', got {entry!r}")
    return head, config or None


def parse_policies(text: str) -> list[str]:
    """``POLICY[:CONFIG.toml],...``: one agentrt server per entry, with that ``--config`` if given."""
    entries = [p.strip() for p in text.split(",") if p.strip()]
    unknown = [e for e in entries if split_config(e)[0] not in POLICIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown policies {unknown}; expected some of {', '.join(POLICIES)}")
    return entries


SLOT_SAVE = "slot-save"


@dataclasses.dataclass(frozen=True)
class Front:
    """agentrt in front of a freshly started llama.cpp server: one ``--llama-front`` entry."""

    policy: str
    ahead: int | None = None  # calls queued ahead at the server; None: the backend's default
    config: str | None = None  # the front's --config file
    slot_save: bool = False  # the server saves slots (--slot-save-path) and the front uses it

    @property
    def label(self) -> str:
        ahead = "" if self.ahead is None else f"@{self.ahead}"
        save = f"+{SLOT_SAVE}" if self.slot_save else ""
        return f"agentrt/{self.policy}{ahead}{save}{_settings(self.config)}+llama.cpp"

    def backend_spec(self, root: str) -> str:
        """The front's ``--backend`` for the server at ``root``."""
        options = [] if self.ahead is None else [f"queue_ahead={self.ahead}"]
        if self.slot_save:
            options.append("slot_save=1")
        return ",".join([f"llamacpp+{root}", *options])


def parse_fronts(text: str) -> list[Front]:
    """``POLICY[@AHEAD][+slot-save][:CONFIG.toml],...`` -> one :class:`Front` per entry."""
    fronts: list[Front] = []
    for entry in (e.strip() for e in text.split(",") if e.strip()):
        head, config = split_config(entry)
        head, plus, option = head.partition("+")
        if plus and option != SLOT_SAVE:
            raise argparse.ArgumentTypeError(f"expected POLICY[@N]+{SLOT_SAVE}, got {entry!r}")
        policy, sep, ahead = head.partition("@")
        if sep and not ahead.isdigit():
            raise argparse.ArgumentTypeError(f"expected POLICY@N with N >= 0 calls queued ahead, got {entry!r}")
        if plus and sep and int(ahead) > 0:
            raise argparse.ArgumentTypeError(
                f"{entry!r}: a front that saves slots sends no call ahead (a call sent ahead would take "
                "a slot before its context could be saved): drop @N or use @0"
            )
        parse_policies(policy)
        fronts.append(Front(policy, int(ahead) if sep else None, config, slot_save=bool(plus)))
    return fronts


def _settings(config: str | None) -> str:
    return "" if config is None else f"[{Path(config).stem}]"


def _scheduler_of(policy: str, config: str | None) -> Any:
    """``policy`` with the ``[scheduler]`` table of ``config`` (ValueError when it cannot be read)."""
    from agentrt.config import load_config
    from agentrt.scheduling import SchedulerConfig

    try:
        return load_config(SchedulerConfig, config, "scheduler", {"policy": policy})
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise ValueError(f"config {config}: {e}") from None


def system_schedulers(args: argparse.Namespace) -> dict[str, Any]:
    """The scheduler the simulator runs each system of ``args`` with, by label, where the label
    alone does not say it: llama.cpp's server alone runs its calls first come, first served; a
    front, and an agentrt server given a config file, its policy with that file's
    ``[scheduler]`` table (ValueError when a file cannot be read)."""
    from agentrt.scheduling import SchedulerConfig

    schedulers: dict[str, Any] = {"llama.cpp": SchedulerConfig(policy="fcfs")}
    for front in args.llama_front:
        schedulers[front.label] = _scheduler_of(front.policy, front.config)
    for label, policy, config, _ in _agentrt_entries(args):
        if config is not None:
            schedulers[label] = _scheduler_of(policy, config)
    return schedulers


def parse_retention(text: str) -> list[str]:
    from agentrt.scheduling import RETENTION_MODES

    modes = [m.strip() for m in text.split(",") if m.strip()]
    unknown = [m for m in modes if m not in RETENTION_MODES]
    if not modes or unknown:
        raise argparse.ArgumentTypeError(f"expected a comma list of {', '.join(RETENTION_MODES)}, got {text!r}")
    return list(dict.fromkeys(modes))


def _agentrt_entries(args: argparse.Namespace) -> list[tuple[str, str, str | None, str | None]]:
    """(label, policy, config file, retention mode) of every agentrt server of ``args``."""
    modes = args.kv_retention or [None]
    entries = []
    for entry in args.policies:
        policy, config = split_config(entry)
        for mode in modes:
            label = f"agentrt/{policy}{_settings(config)}" + (f"+kv-{mode}" if mode else "")
            entries.append((label, policy, config, mode))
    return entries


def agentrt_systems(args: argparse.Namespace) -> list[tuple[str, str, list[str]]]:
    """(label, policy, serve arguments) of every agentrt server: one per ``--policies`` entry
    (with its ``--config`` after any of ``--serve-arg``, so that it wins), times each
    ``--kv-retention`` mode when given (the entry's servers then differ in that flag only)."""
    return [
        (label, policy, [*args.serve_arg, *(["--config", config] if config else []),
                         *(["--kv-retention", mode] if mode else [])])
        for label, policy, config, mode in _agentrt_entries(args)
    ]


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policies", type=parse_policies, default=["fcfs", "mlfq", "plas", "atlas"],
                        metavar="POLICY[:FILE],...",
                        help="agentrt servers to start, one per scheduling policy (comma list; '' for none); "
                        ":FILE.toml is that server's --config (e.g. a [scheduler] table), so that settings "
                        "of one policy can be compared side by side, e.g. plas,plas:tokens.toml")
    parser.add_argument("--external", type=parse_external, action="append", default=[], metavar="NAME=URL[#MODEL]",
                        help="an external OpenAI-compatible server (repeatable)")
    parser.add_argument("--kv-retention", type=parse_retention, default=None, metavar="MODES",
                        help="one agentrt server per policy and KV retention mode (comma list of off,ttl), "
                        "e.g. off,ttl: LRU against program-aware retention, side by side")
    parser.add_argument("--serve-arg", action="append", default=[], metavar="ARG",
                        help="extra argument for every `agentrt serve` (repeatable), e.g. --serve-arg=--max-num-seqs=32")
    parser.add_argument("--model", default=None, help="model name to request (default: each server's first)")
    parser.add_argument("--latency-target", type=float, default=None,
                        help="mean program latency (s) at which throughputs are compared "
                        "(default: the baseline's highest mean latency up to its middle swept rate)")
    parser.add_argument("--token-latency-target", type=float, default=None,
                        help="mean program-level token latency (s per generated token) for the second "
                        "comparison (default: chosen like --latency-target)")
    parser.add_argument("--startup-timeout", type=float, default=600.0, help="seconds to wait for a server's /health")
    parser.add_argument("--simulate", default=None, metavar="PROFILE",
                        help="also run the simulator (a shipped profile name or a TOML file) on the measured "
                        "programs of every agentrt system and print its prediction next to the measurement; "
                        "with --llama-server also llama.cpp alone (as FCFS) and each --llama-front (its policy "
                        "and [scheduler] table) on the server's slots: the profile then models the server")
    parser.add_argument("--fit-steps", action="store_true",
                        help="with --simulate: replace the profile's step-time terms with a fit to the agentrt "
                        "servers' own engine steps during these runs (their /v1/engine/stats sums)")
    parser.add_argument("--sim-max-batch-size", type=int, default=None,
                        help="the simulated engine's batch limit (default: --serve-arg --max-num-seqs, else the profile's; "
                        "for the llama.cpp systems, their server's slots)")
    parser.add_argument("--from-json", default=None, metavar="FILE",
                        help="report (and --simulate) a saved `bench compare --json` run instead of measuring")
    llama_server.add_arguments(parser)
    parser.add_argument("--llama-front", type=parse_fronts, default=[], metavar="POLICY[@AHEAD][+slot-save][:FILE],...",
                        help="with --llama-server: also `agentrt serve --backend llamacpp+URL` in front of "
                        "a freshly started llama-server, one per entry (comma list); @AHEAD sets the calls "
                        "it queues ahead at the server (the backend's queue_ahead; default: its default); "
                        "+slot-save starts that server with --slot-save-path and has the front save a "
                        "program's slot when another takes it and restore it for its next call "
                        "(slot_save=1); :FILE.toml is the front's --config (e.g. its [scheduler] table)")
    parser.add_argument("--both-orders", action="store_true",
                        help="run every rate twice on fresh servers, the second time with the systems in "
                        "reverse order: a drift in the host's load then favours neither side (each system "
                        "gets two runs per rate)")
    add_workload_arguments(parser)


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


# A benchmark's servers have nothing worth draining when the run stops (or is
# interrupted with Ctrl-C): in-flight calls get this long, then are cut.
SERVER_SHUTDOWN_S = 3.0


@contextmanager
def agentrt_server(policy: str, extra_args: list[str], startup_timeout: float) -> Iterator[str]:
    """Run ``agentrt serve --scheduling-policy POLICY`` on a free loopback port; yield its base URL."""
    import httpx

    port = free_port()
    command = [sys.executable, "-m", "agentrt.cli", "serve", "--host", "127.0.0.1", "--port", str(port),
               "--scheduling-policy", policy, "--shutdown-timeout", str(SERVER_SHUTDOWN_S), *extra_args]
    log_file = tempfile.NamedTemporaryFile(prefix=f"agentrt-serve-{policy}-", suffix=".log", delete=False)  # noqa: SIM115
    log.info("starting server", policy=policy, port=port, log=log_file.name)
    process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT, env={**os.environ},
                               preexec_fn=llama_server.stop_with_parent)
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise ServerStartError(
                    f"agentrt serve ({policy}) exited with {process.returncode} (log: {log_file.name}):\n"
                    f"{_tail(log_file.name)}"
                )
            try:
                if httpx.get(f"http://127.0.0.1:{port}/health", timeout=2.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise ServerStartError(
                    f"agentrt serve ({policy}) not healthy after {startup_timeout:.0f} s (log: {log_file.name}):\n"
                    f"{_tail(log_file.name)}"
                )
            time.sleep(0.5)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        crashed = process.poll() is not None  # it died before we stopped it
        process.terminate()
        try:
            process.wait(timeout=SERVER_SHUTDOWN_S + 10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()
        if crashed:
            log.warning("agentrt serve exited on its own; its log is kept", policy=policy, log=log_file.name)
        else:
            Path(log_file.name).unlink(missing_ok=True)


def _tail(path: str, lines: int = 20) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])


def compare(systems: list[SystemResult], latency_target: float | None,
            metric: LatencyMetric = "latency") -> Comparison:
    """Throughput at equal mean ``metric`` of every system against the first."""

    def curve(system: SystemResult, stat: str = "mean") -> list[tuple[float, float]]:
        return [(r.rate, getattr(getattr(r, metric), stat)) for r in system.runs]

    base = systems[0]
    base_points = curve(base)
    if latency_target is None:
        # The baseline's latency up to its middle rate (the max, so that noise on a flat start
        # cannot put the target below the lightest load's latency).
        latency_target = max(m for _, m in base_points[: len(base_points) // 2 + 1])
    base_at = rate_at_latency(base_points, latency_target)
    rows = []
    for system in systems:
        at = rate_at_latency(curve(system), latency_target)
        ratio: float | None = None
        bound = "?"
        if base_at.bound != "<" and base_at.rate > 0 and at.bound != "<":
            ratio = at.rate / base_at.rate
            bound = {("=", "="): "=", (">=", "="): ">=", ("=", ">="): "<=", (">=", ">="): "?"}[(at.bound, base_at.bound)]
        rows.append(ComparisonRow(
            label=system.label, rate_at_target=at, ratio=ratio, ratio_bound=bound,
            mean_at_baseline_rate=interpolate(curve(system), base_at.rate),
            p95_at_baseline_rate=interpolate(curve(system, "p95"), base_at.rate),
        ))
    return Comparison(baseline=base.label, latency_target=latency_target, rows=rows, metric=metric)


def print_comparison(console: Any, comparison: Comparison) -> None:
    from rich.markup import escape
    from rich.table import Table

    if comparison.metric == "latency":
        title, unit, fmt = f"mean program latency ({comparison.latency_target:.1f} s)", "s", ".1f"
    else:
        title, unit, fmt = (f"mean program-level token latency ({comparison.latency_target:.3g} s/token)",
                            "s/token", ".3g")
    table = Table(title=f"throughput at equal {title}, against {comparison.baseline}")
    for column in ("system", "programs/s at target", "ratio", f"mean {unit} at baseline's rate",
                   f"p95 {unit} at baseline's rate"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for row in comparison.rows:
        ratio = "n/a" if row.ratio is None else f"{'' if row.ratio_bound == '=' else row.ratio_bound}{row.ratio:.2f}x"
        table.add_row(escape(row.label), str(row.rate_at_target), ratio,
                      "-" if math.isnan(row.mean_at_baseline_rate) else format(row.mean_at_baseline_rate, fmt),
                      "-" if math.isnan(row.p95_at_baseline_rate) else format(row.p95_at_baseline_rate, fmt))
    console.print(table)


def print_engine_queues(console: Any, systems: list[SystemResult]) -> None:
    """The engine's own queue through each run, for the systems whose engine reports one."""
    from rich.markup import escape
    from rich.table import Table

    rows = [(s.label, r) for s in systems for r in s.runs if r.engine_queue is not None]
    if not rows:
        return
    table = Table(title="the engine's own queue (llama.cpp /metrics, sampled through each run)")
    for column in ("system", "rate/s", "running (mean)", "queued (mean)", "queued (max)",
                   "time queue non-empty", "prompt tokens computed", "samples"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for label, run in rows:
        q = run.engine_queue
        assert q is not None
        table.add_row(escape(label), f"{run.rate:g}", f"{q.processing_mean:.2f}", f"{q.deferred_mean:.2f}",
                      f"{q.deferred_max:.0f}", f"{q.deferred_share:.0%}",
                      "-" if q.prompt_tokens is None else f"{q.prompt_tokens:.0f}", str(q.samples))
    console.print(table)


def serve_flag(serve_args: list[str], flag: str) -> str | None:
    """The value given to ``flag`` in the ``--serve-arg`` list (``--flag=V`` or ``--flag V``)."""
    for i, arg in enumerate(serve_args):
        if arg.startswith(flag + "="):
            return arg.split("=", 1)[1]
        if arg == flag and i + 1 < len(serve_args):
            return serve_args[i + 1]
    return None


def default_llama_slots(args: argparse.Namespace) -> int:
    """The slots of ``--llama-server`` without ``--llama-slots``: agentrt's batch (its ``--max-num-seqs``)."""
    from agentrt.engine.config import EngineConfig

    batch = serve_flag(args.serve_arg, "--max-num-seqs")
    return int(batch) if batch else EngineConfig().max_num_seqs


def llama_config(args: argparse.Namespace) -> llama_server.LlamaServerConfig | None:
    """``--llama-server``: as many slots as agentrt's batch (its ``--max-num-seqs``), 4,096 tokens each."""
    return llama_server.config_from_args(args, default_llama_slots(args), 4096)


def measure(args: argparse.Namespace, console: Any) -> list[SystemResult] | None:
    """Run every system at each rate in turn, on fresh agentrt servers for each rate.

    Every rate replays the same seeded programs, so a server kept across rates
    would find the earlier rates' prompts in its prefix cache and the later
    rates would look faster than they are (measured: mean latency 173 s at
    0.3 programs/s, then 67 s at 0.9). Fresh servers start cold, and so does
    the llama.cpp server of ``--llama-server``, started per rate too. External
    servers keep their caches between rates: restart them yourself, or give
    one rate per command. With ``--both-orders`` every rate runs twice, the
    second time with the systems in reverse order. None when a server could
    not start (reported on ``console``).
    """
    import anyio

    from agentrt.bench.load import Target
    from agentrt.bench.serve import interruptible, rates_of, sweep_targets
    from agentrt.bench.serve_report import Progress

    extra = {"ignore_eos": True} if args.ignore_eos else {}
    try:
        llama = llama_config(args)
    except llama_server.LlamaServerError as e:
        console.print(f"[red]error:[/red] {e}")
        return None
    if llama is not None:  # its /metrics counts the calls it runs and the ones it queues
        llama = dataclasses.replace(llama, extra_args=[*llama.extra_args, "--metrics"])
    systems: list[SystemResult] = []
    began = time.monotonic()
    with Progress(enabled=not args.no_progress) as progress:
        turns = [(rate, backwards) for rate in rates_of(args) for backwards in (False, True)[: 1 + args.both_orders]]
        for rate, backwards in turns:
            targets: list[Target] = []
            with ExitStack() as servers:
                for label, policy, serve_args in agentrt_systems(args):
                    try:
                        url = servers.enter_context(agentrt_server(policy, serve_args, args.startup_timeout))
                    except ServerStartError as e:
                        progress.stop()
                        console.print(f"[red]error:[/red] {e}")
                        return None
                    targets.append(Target(label=label, base_url=url, model=args.model or "", extra_body=extra))
                for name, url, model in args.external:
                    targets.append(Target(label=name, base_url=url, model=model or args.model or "",
                                          extra_body=extra))
                if llama is not None:
                    try:
                        url = servers.enter_context(llama_server.llama_server(llama, args.startup_timeout))
                    except llama_server.LlamaServerError as e:
                        progress.stop()
                        console.print(f"[red]error:[/red] {e}")
                        return None
                    targets.append(Target(label="llama.cpp", base_url=url, model=args.model or "",
                                          extra_body=extra, queue_metrics=url.removesuffix("/v1")))
                for front in args.llama_front if llama is not None else []:
                    assert llama is not None
                    try:
                        server = llama
                        if front.slot_save:
                            saves = servers.enter_context(tempfile.TemporaryDirectory(prefix="llama-slots-"))
                            server = dataclasses.replace(
                                llama, extra_args=[*llama.extra_args, "--slot-save-path", saves]
                            )
                        engine = servers.enter_context(llama_server.llama_server(server, args.startup_timeout))
                        root = engine.removesuffix("/v1")
                        front_args = ["--backend", front.backend_spec(root),
                                      *([] if front.config is None else ["--config", front.config])]
                        url = servers.enter_context(agentrt_server(front.policy, front_args, args.startup_timeout))
                    except (llama_server.LlamaServerError, ServerStartError) as e:
                        progress.stop()
                        console.print(f"[red]error:[/red] {e}")
                        return None
                    targets.append(Target(label=front.label, base_url=url,
                                          model=args.model or "", extra_body=extra, queue_metrics=root))
                offset = time.monotonic() - began
                one_rate = argparse.Namespace(**{**vars(args), "rates": [rate]})
                order = targets[::-1] if backwards else targets
                measured = anyio.run(interruptible, sweep_targets, order, one_rate, progress)
                measured = measured[::-1] if backwards else measured
            for run in (run for system in measured for run in system.runs):
                run.started += offset
            if not systems:
                systems = measured
                continue
            for system, more in zip(systems, measured, strict=True):
                system.runs.extend(more.runs)
                system.programs.extend(more.programs)
                system.base_url = more.base_url
    return systems


def fitted_to_runs(profile: Any, systems: list[SystemResult], console: Any) -> Any:
    """``profile`` with its four step-time terms fitted to the steps the servers ran in these runs.

    The runs' engines share one configuration, so their sums add into one fit; the
    profile keeps its capacities (KV blocks, batch limits, swap costs)."""
    from agentrt.protocol.engine import StepMoments
    from agentrt.sim.fit import fit_moments

    moments = StepMoments()
    for system in systems:
        for run in system.runs:
            if run.server is not None and run.server.step_moments is not None:
                moments = moments.plus(run.server.step_moments)
    try:
        fit = fit_moments(moments)
    except ValueError as e:
        console.print(f"[yellow]--fit-steps: no fit ({e}); the profile's own terms are used[/yellow]")
        return profile
    terms = ", ".join(f"{k} {v:.3g}" for k, v in fit.coefficients.items())
    console.print(f"step time fitted to {fit.steps} engine steps of these runs (R^2 {fit.r2:.2f}): {terms}")
    return msgspec.structs.replace(profile, name=f"{profile.name}, fitted to these runs", **fit.coefficients)


def run(args: argparse.Namespace) -> int:
    from agentrt.bench.serve import load_result, write_outputs
    from agentrt.bench.serve_report import print_kv, print_runs, report_console

    console = report_console()
    problem = validate(args)
    if problem is None and not (args.policies or args.external or args.llama_server or args.from_json):
        problem = "nothing to compare: give --policies, --external and/or --llama-server"
    if problem is None and args.kv_retention and not args.policies:
        problem = "--kv-retention sets the retention of the agentrt servers of --policies"
    if problem is None and args.llama_front and not (args.llama_server or args.from_json):
        problem = "--llama-front puts agentrt in front of the llama.cpp server of --llama-server"
    if problem is None and args.fit_steps and not args.simulate:
        problem = "--fit-steps fits the profile given with --simulate PROFILE"
    if problem:
        console.print(f"[red]error:[/red] {problem}")
        return 2
    if args.from_json:
        result = load_result(args.from_json)
        systems = result.systems
    else:
        measured = measure(args, console)
        if measured is None:
            return 2
        systems = measured
        result = BenchResult(command=sys.argv, workload=args.workload, size=args.size,
                             tool_policy=args.tool_policy, seed=args.seed,
                             num_programs=args.num_programs, duration=args.duration, systems=systems)
    result.comparison = compare(systems, args.latency_target)
    result.token_comparison = compare(systems, args.token_latency_target, "token_latency")
    print_runs(console, systems)
    print_kv(console, systems)
    print_engine_queues(console, systems)
    print_comparison(console, result.comparison)
    print_comparison(console, result.token_comparison)
    if args.simulate and not args.from_json:
        write_outputs(result, args, console)  # the measurement is kept whatever the replay does
    if args.simulate:
        from agentrt.bench.replay import predict, print_predictions
        from agentrt.sim.profile import load_profile

        batch = args.sim_max_batch_size or serve_flag(args.serve_arg, "--max-num-seqs")
        profile = load_profile(args.simulate)
        if args.fit_steps:
            profile = fitted_to_runs(profile, systems, console)
        try:
            servers = system_schedulers(args)
        except ValueError as e:
            console.print(f"[red]error:[/red] {e}")
            return 2
        result.predictions = predict(systems, profile, int(batch) if batch else None, servers,
                                     args.sim_max_batch_size or args.llama_slots or default_llama_slots(args))
        print_predictions(console, result.predictions, profile.name)
    write_outputs(result, args, console)
    return 0 if all(r.errors == r.cut == 0 for s in systems for r in s.runs) else 1
