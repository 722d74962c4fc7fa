"""A run's time limit stops its programs in worker threads too: their calls end, none follows."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import anyio
import pytest
from tests.unit.agents.live_server import echo_server

from agentrt.bench.cutoff import Cutoff, RunCut, httpx
from agentrt.protocol.headers import PROGRAM


def test_a_cut_ends_a_blocked_call_and_refuses_the_next() -> None:
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    accepted: list[socket.socket] = []
    threading.Thread(target=lambda: accepted.append(listener.accept()[0]), daemon=True).start()
    cutoff = Cutoff()
    client = httpx.Client(transport=cutoff, timeout=3600)
    outcome: list[BaseException] = []

    def call() -> None:
        try:
            client.get(f"http://127.0.0.1:{port}/never-answered")
        except BaseException as e:
            outcome.append(e)

    caller = threading.Thread(target=call, daemon=True)
    caller.start()
    deadline = time.monotonic() + 10
    while not accepted and time.monotonic() < deadline:
        time.sleep(0.01)
    assert accepted, "the call never connected"
    time.sleep(0.1)
    assert caller.is_alive()  # blocked on the server's silence
    cut_at = time.monotonic()
    cutoff.cut()
    caller.join(timeout=5)
    assert not caller.is_alive() and time.monotonic() - cut_at < 2
    assert outcome and isinstance(outcome[0], httpx.TransportError)
    with pytest.raises(RunCut):
        client.get(f"http://127.0.0.1:{port}/after")
    client.close()
    listener.close()
    for sock in accepted:
        sock.close()


class _Unheeding:
    """Holds each program call (up to a minute, until released) before serving it, without
    watching for the client leaving, as llama.cpp's server holds a queued call; notes when
    each arrived."""

    def __init__(self) -> None:
        self.released = threading.Event()
        self.arrivals: list[float] = []

    def __call__(self, app: Any) -> Any:
        async def held(scope: dict[str, Any], receive: Any, send: Any) -> None:
            if scope["type"] == "http" and any(
                name == PROGRAM.encode() for name, _ in scope["headers"]
            ):
                self.arrivals.append(time.monotonic())
                await anyio.to_thread.run_sync(self.released.wait, HOLD_S)
            await app(scope, receive, send)

        return held


HOLD_S = 60.0


def test_compare_ends_promptly_after_its_timeout_and_no_cut_call_follows(tmp_path: Path) -> None:
    """Servers that hold the calls in flight long after the limit and do not notice a client
    leaving: the command still ends at once, every program counts as cut, and the first side's
    programs send nothing once the second side has started."""
    out = tmp_path / "cut.json"
    side_a, side_b = _Unheeding(), _Unheeding()
    with (
        echo_server(side_a, token_delay=0.01) as (first, _),
        echo_server(side_b, token_delay=0.01) as (second, _),
    ):
        began = time.monotonic()
        done = subprocess.run(
            [sys.executable, "-m", "agentrt.cli", "bench", "compare", "--policies", "",
             "--external", f"a={first}", "--external", f"b={second}", "--workload", "react",
             "--num-programs", "2", "--rate", "50", "--timeout", "1", "--json", str(out), "--no-progress"],
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        took = time.monotonic() - began
        side_a.released.set()
        side_b.released.set()
    assert done.returncode == 1, done.stdout + done.stderr
    # Each side's calls are held for a minute after its 1 s limit; the command does not wait for them.
    assert took < HOLD_S - 10, took
    systems = json.loads(out.read_text())["systems"]
    for system in systems:
        [run] = system["runs"]
        assert (run["completed"], run["errors"], run["cut"]) == (0, 0, 2)
    assert side_a.arrivals and side_b.arrivals
    assert max(side_a.arrivals) < min(side_b.arrivals)
