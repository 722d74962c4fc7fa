"""How ``bench serve`` and ``bench compare`` show results: live progress, tables, the latency plot."""

from __future__ import annotations

import math
import sys
from collections.abc import Sequence
from typing import Any

from agentrt.bench.program_metrics import ProgramResult, prefix_hit_rate


def report_console() -> Any:
    """The console tables go to: the terminal's width, or wide enough for every column in a file or pipe."""
    from rich.console import Console

    return Console(width=None if sys.stdout.isatty() else 220)


class Progress:
    """A live progress bar per (system, rate) run on stderr; silent when disabled."""

    def __init__(self, enabled: bool = True) -> None:
        self._bar: Any = None
        if enabled:
            from rich.console import Console
            from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
            from rich.progress import Progress as RichProgress

            self._bar = RichProgress(
                TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                TextColumn("{task.fields[status]}"), TimeElapsedColumn(),
                console=Console(stderr=True),
            )
        self._errors: dict[int, int] = {}

    def __enter__(self) -> Progress:
        if self._bar is not None:
            self._bar.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        """Stop redrawing (idempotent), e.g. before printing an error."""
        if self._bar is not None:
            self._bar.stop()

    def start(self, description: str, total: int) -> int:
        if self._bar is None:
            return 0
        task: int = self._bar.add_task(description, total=total, status="")
        self._errors[task] = 0
        return task

    def advance(self, task: int, result: ProgramResult) -> None:
        if self._bar is None:
            return
        if result.error is not None:
            self._errors[task] += 1
        errors = self._errors[task]
        self._bar.update(task, advance=1, status=f"[red]{errors} failed[/red]" if errors else "")

    def finish(self, task: int) -> None:
        if self._bar is not None:
            self._bar.update(task, completed=self._bar.tasks[task].total)


def _s(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value:.2f}"


def _ms(value: float) -> str:
    return "-" if value is None or math.isnan(value) else f"{value * 1000:.0f}"


def print_runs(console: Any, systems: Sequence[Any]) -> None:
    """One row per (system, rate): the program-level and call-level figures of the run."""
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="agent programs under Poisson load (latency in s, TTFT/ITL in ms)")
    for column in ("system", "rate/s", "done", "err", "cut", "prog/s", "tok/s", "mean", "p50", "p95", "p99",
                   "s/token", "wait", "TTFT p50", "ITL p50", "calls", "fair", "preempt", "swaps"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for system in systems:
        for run in system.runs:
            server = run.server
            table.add_row(
                escape(system.label), f"{run.rate:g}", str(run.completed), str(run.errors), str(run.cut),
                f"{run.throughput:.3f}",
                f"{run.token_throughput:.1f}", _s(run.latency.mean), _s(run.latency.p50), _s(run.latency.p95),
                _s(run.latency.p99), f"{run.token_latency.mean:.3f}", f"{run.wait_share:.0%}",
                _ms(run.ttft.p50), _ms(run.itl.p50), str(run.calls), f"{run.fairness:.2f}",
                "-" if server is None else f"{server.preemptions:.0f}",
                "-" if server is None else f"{server.swaps:.0f}",
            )
    console.print(table)


def print_kv(console: Any, systems: Sequence[Any]) -> None:
    """The prefix cache and KV retention per (system, rate), for servers that report them (a front
    that saves llama.cpp's slots reports its saves as contexts lost and its restores)."""
    from rich.markup import escape
    from rich.table import Table

    rows = [(s.label, r) for s in systems for r in s.runs
            if r.server is not None and (r.server.prefix_queries > 0 or r.server.kv_contexts_lost > 0)]
    if not rows:
        return
    table = Table(title="prefix cache and KV retention (agentrt servers, counted over each run)")
    for column in ("system", "rate/s", "mean s", "p95 s", "prefix hit", "prompt tokens", "recomputed",
                   "pins", "reused", "expired", "yielded", "held", "lost", "restored", "calls held back",
                   "held s"):
        table.add_column(column, justify="left" if column == "system" else "right")
    for label, run in rows:
        c = run.server
        hit = prefix_hit_rate(c)
        table.add_row(escape(label), f"{run.rate:g}", _s(run.latency.mean), _s(run.latency.p95),
                      "-" if math.isnan(hit) else f"{hit:.1%}", f"{c.prefix_queries:.0f}",
                      f"{c.recomputed_prompt_tokens:.0f}", f"{c.kv_pins:.0f}", f"{c.kv_pins_reused:.0f}",
                      f"{c.kv_pins_expired:.0f}", f"{c.kv_pins_yielded:.0f}", f"{c.kv_pins_held:.0f}",
                      f"{c.kv_contexts_lost:.0f}", f"{c.kv_contexts_restored:.0f}",
                      f"{c.kv_admissions_held:.0f}", f"{c.kv_admissions_held_s:.1f}")
    console.print(table)


def plot_latency(systems: Sequence[Any], path: str, title: str = "") -> None:
    """Mean and p95 program latency against arrival rate, one line per system."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for system in systems:
        rates = [r.rate for r in system.runs]
        axes[0].plot(rates, [r.latency.mean for r in system.runs], marker="o", label=system.label)
        axes[1].plot(rates, [r.latency.p95 for r in system.runs], marker="o", label=system.label)
    for ax, name in zip(axes, ("mean", "p95"), strict=True):
        ax.set_xlabel("arrival rate (programs/s)")
        ax.set_ylabel(f"{name} program latency (s)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
