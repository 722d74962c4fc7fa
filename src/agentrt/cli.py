"""``agentrt`` command line: one subcommand per room, each defined next to the code it runs.

A subcommand module exposes ``add_arguments(parser)`` and ``run(args) -> int``
and keeps heavy imports (torch, transformers) inside ``run`` so that
``agentrt --help`` stays fast on a client-only install.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# name -> (module, help). Order is the order shown in --help.
SUBCOMMANDS: dict[str, tuple[str, str]] = {
    "serve": ("agentrt.serving.cli", "serve the OpenAI-compatible API (embedded engine, replicas or remote engines)"),
    "bench": ("agentrt.bench.cli", "run a benchmark (prints a table, writes JSON)"),
    "sim": ("agentrt.sim.cli", "simulate scheduling policies at cluster scale; `sim fit` fits a profile"),
    "plan": (
        "agentrt.parallelism.cli",
        "build parallel plans (data, tensor, co-shard, pipeline, 3-D) for a model over N devices; --verify runs them",
    ),
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="agentrt", description=__doc__.splitlines()[0])
    parser.add_argument("--log-level", default=None, help="debug | info | warning | error")
    parser.add_argument("--log-format", default=None, choices=["json", "console"])
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    from agentrt.log import configure_logging

    args = build_parser().parse_args(argv)
    configure_logging(args.log_level, args.log_format)
    try:
        return int(args._run(args) or 0)
    except KeyboardInterrupt:
        from agentrt.log import get_logger

        get_logger("agentrt.cli").warning("interrupted", command=args.command)
        return 130  # the shell's convention for a command stopped by SIGINT


if __name__ == "__main__":
    sys.exit(main())
