"""Presenting a sweep: rich tables for the terminal and a latency-vs-rate plot."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from agentrt.sim.sweep import Headline, LatencyMetric, SweepReport, mean_of


def points_table(report: SweepReport) -> Table:
    table = Table(
        title=f"{report.workload} on {report.profile} x{report.engines} ({report.programs} programs)"
    )
    for column in (
        "policy",
        "rate/s",
        "mean s",
        "p50",
        "p95",
        "p99",
        "s/token",
        "prog/s",
        "queue s",
        "exec s",
        "tool s",
        "preempt",
        "swaps",
        "recomp",
        "hit",
        "Jain",
    ):
        table.add_column(column, justify="right")
    for p in report.points:
        r = p.result
        e = r.engines
        table.add_row(
            p.label,
            f"{p.rate:.3g}",
            f"{r.latency.mean:.1f}",
            f"{r.latency.p50:.1f}",
            f"{r.latency.p95:.1f}",
            f"{r.latency.p99:.1f}",
            f"{r.token_latency.mean:.3f}",
            f"{r.throughput:.3f}",
            f"{r.wait.queue:.1f}",
            f"{r.wait.execution:.1f}",
            f"{r.wait.tool:.1f}",
            str(e.preemptions),
            str(e.swaps_out),
            str(e.recomputes),
            f"{e.prefix_hit_rate:.2f}",
            f"{r.jain_fairness:.2f}",
        )
    return table


def headline_table(report: SweepReport) -> Table:
    table = Table(
        title=f"throughput at mean latency <= {report.latency_target_s:.1f} s "
        f"and at mean token latency <= {report.token_latency_target_s:.3g} s/token"
    )
    for column in ("policy", "programs/s", "vs FCFS", "programs/s (token)", "vs FCFS (token)"):
        table.add_column(column, justify="right")
    for h, t in zip(report.headline, report.token_latency_headline, strict=True):
        table.add_row(h.label, *_headline_cells(h), *_headline_cells(t))
    return table


def _headline_cells(h: Headline) -> tuple[str, str]:
    rate = "-" if h.rate_at_target is None else f"{'>=' if h.capped else ''}{h.rate_at_target:.3g}"
    return rate, "-" if h.ratio_vs_fcfs is None else f"{h.ratio_vs_fcfs:.2f}x"


def plot_latency(report: SweepReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5))
    panels: tuple[tuple[LatencyMetric, float, str], ...] = (
        ("latency", report.latency_target_s, "mean program latency (s)"),
        (
            "token_latency",
            report.token_latency_target_s,
            "mean program-level token latency (s/token)",
        ),
    )
    for ax, (metric, target, ylabel) in zip(axes, panels, strict=True):
        for label in dict.fromkeys(p.label for p in report.points):
            pts = sorted(
                (p.rate, mean_of(p.result, metric)) for p in report.points if p.label == label
            )
            ax.plot([r for r, _ in pts], [m for _, m in pts], marker="o", label=label)
        ax.axhline(target, color="grey", linestyle=":", label="target")
        ax.set_xlabel("program arrival rate (programs/s)")
        ax.set_ylabel(ylabel)
        ax.set_yscale("log")
        ax.legend()
    fig.suptitle(f"{report.workload} on {report.profile} x{report.engines}")
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
