"""``agentrt bench``: the project's benchmark commands, one module per benchmark.

Each benchmark module exposes ``add_arguments(parser)`` and ``run(args) -> int``,
prints a table and writes ``--json``. Heavy imports stay inside ``run``.
"""

from __future__ import annotations

import argparse
import importlib

# name -> (module, help). Add an entry per benchmark module.
BENCHMARKS: dict[str, tuple[str, str]] = {
    "sdk": ("agentrt.bench.sdk_overhead", "per-call overhead of the client SDK (context, fork check, headers) in us"),
    "scheduler": ("agentrt.bench.scheduler", "cost of one scheduling decision per policy (p50/p99 us)"),
    "serve": ("agentrt.bench.serve", "agent programs under Poisson load against one server (program latency)"),
    "compare": ("agentrt.bench.compare", "several servers/policies on the same workload: throughput at equal latency"),
    "engine": ("agentrt.bench.engine", "embedded engine: throughput vs transformers, decode roofline, swap cost"),
    "router": ("agentrt.bench.router", "per-call overhead of the router, a replica process and HTTP vs the engine (p50/p99)"),
    "relay": ("agentrt.bench.relay", "CPU per token agentrt spends relaying a remote engine's stream (backend, router)"),
    "http": ("agentrt.bench.http_overhead", "per-call cost of the OpenAI app in-process and over loopback HTTP vs the engine (p50/p99)"),
}


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="benchmark", required=True, metavar="BENCHMARK")
    for name, (module_name, help_text) in BENCHMARKS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_bench_run=module.run)


def run(args: argparse.Namespace) -> int:
    return int(args._bench_run(args) or 0)
