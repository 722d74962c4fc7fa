"""Every example in ``examples/`` runs as a user would run it, and prints a real answer."""

from __future__ import annotations

import socket
import subprocess
import sys
from pathlib import Path

import pytest
from tests.unit.agents.live_server import echo_server

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def run_example(name: str, *args: str, timeout: float = 600) -> str:
    return run_example_process(name, *args, timeout=timeout).stdout


def run_example_process(name: str, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    done = subprocess.run([sys.executable, str(EXAMPLES / name), *args], capture_output=True, text=True,
                          timeout=timeout, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def test_drop_in_client_runs_a_program_against_a_server() -> None:
    with echo_server() as (url, engine):
        out = run_example("drop_in_client.py", url)
    # The echo model repeats the question: the program made both of its calls, in order.
    assert out.splitlines() == ["day 1: One thing to do in Paris on day 1?", "day 2: One thing to do in Paris on day 2?"]
    programs = {r.program.program_id for r in engine.requests if r.program is not None}
    assert len(programs) == 1 and len(engine.requests) == 2


def test_standalone_server_example_starts_serves_and_stops() -> None:
    out = run_example("standalone_server.py", free_port(), "--engine-factory", "agentrt.testing.echo:EchoEngine")
    assert out.strip() == "What is the capital of France?"


@pytest.mark.slow
def test_decorator_example_answers_with_the_default_model() -> None:
    done = run_example_process("decorator.py")
    assert "Paris" in done.stdout and "Tip:" in done.stdout
    # The in-process server's startup and per-request lines stay out of the user's terminal.
    assert '"logger": "agentrt.serving"' not in done.stderr, done.stderr[-3000:]


@pytest.mark.slow
def test_in_process_example_streams_parallel_answers() -> None:
    lines = run_example("in_process.py").strip().splitlines()
    assert [line.split(":")[0] for line in lines] == ["Paris", "Tokyo", "Lima"]
    assert all(len(line.split(":", 1)[1].strip()) > 3 for line in lines)


@pytest.mark.slow
def test_framework_agent_example_answers_through_the_agents_sdk() -> None:
    assert "Paris" in run_example("framework_agent.py")


@pytest.mark.slow
def test_standalone_server_example_with_the_default_model() -> None:
    assert "Paris" in run_example("standalone_server.py", free_port())
