"""Presenting a sweep: rich tables for the terminal and a latency-vs-rate plot."""

from __future__ import annotations

from pathlib import Path

from rich.table import Table

from agentrt.sim.sweep import SweepReport


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
    table = Table(title=f"throughput at mean latency <= {report.latency_target_s:.1f} s")
    for column in ("policy", "programs/s", "vs FCFS"):
        table.add_column(column, justify="right")
    for h in report.headline:
        rate = (
            "-" if h.rate_at_target is None else f"{'>=' if h.capped else ''}{h.rate_at_target:.3g}"
        )
        ratio = "-" if h.ratio_vs_fcfs is None else f"{h.ratio_vs_fcfs:.2f}x"
        table.add_row(h.label, rate, ratio)
    return table


def plot_latency(report: SweepReport, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for label in dict.fromkeys(p.label for p in report.points):
        pts = sorted((p.rate, p.result.latency.mean) for p in report.points if p.label == label)
        ax.plot([r for r, _ in pts], [m for _, m in pts], marker="o", label=label)
    ax.axhline(report.latency_target_s, color="grey", linestyle=":", label="latency target")
    ax.set_xlabel("program arrival rate (programs/s)")
    ax.set_ylabel("mean program latency (s)")
    ax.set_yscale("log")
    ax.set_title(f"{report.workload} on {report.profile} x{report.engines}")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
