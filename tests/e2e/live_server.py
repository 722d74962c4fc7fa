"""Run a real ``agentrt serve`` in a subprocess on a free loopback port, for end-to-end tests."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ECHO = "agentrt.testing.echo:EchoEngine"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def agentrt_serve(
    *args: str, startup_timeout: float = 120.0, log_path: Path | None = None
) -> Iterator[str]:
    """Start ``agentrt serve ARGS --port <free>``; yield its base URL (``http://127.0.0.1:PORT``); stop it after."""
    with agentrt_serve_process(*args, startup_timeout=startup_timeout, log_path=log_path) as (
        url,
        _,
    ):
        yield url


@contextmanager
def agentrt_serve_process(
    *args: str, startup_timeout: float = 120.0, log_path: Path | None = None
) -> Iterator[tuple[str, subprocess.Popen[bytes]]]:
    """Like :func:`agentrt_serve`, also yielding the process (for tests that signal it)."""
    port = free_port()
    env = {**os.environ, "AGENTRT_LOG_FORMAT": "json"}
    log = open(log_path, "w+b") if log_path else None  # noqa: SIM115 - closed below
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "agentrt.cli",
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
            *args,
        ],
        stdout=log or subprocess.DEVNULL,
        stderr=subprocess.STDOUT if log else subprocess.DEVNULL,
        env=env,
    )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + startup_timeout
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"agentrt serve exited with {process.returncode}: {_tail(log)}")
            try:
                if httpx.get(f"{url}/health", timeout=1.0).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"agentrt serve did not come up in {startup_timeout} s: {_tail(log)}"
                )
            time.sleep(0.1)
        yield url, process
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if log:
            log.close()


def _tail(log: object) -> str:
    if log is None:
        return "(no log captured)"
    log.seek(0)  # type: ignore[attr-defined]
    return log.read()[-2000:].decode(errors="replace")  # type: ignore[attr-defined]
