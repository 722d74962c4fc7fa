"""Every reference agent runs on its own from the command line against any OpenAI-compatible server."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from tests.unit.agents.live_server import echo_server

ROOT = Path(__file__).resolve().parents[3]


@pytest.mark.parametrize(
    ("module", "args"),
    [
        ("react", ["--task", "1", "--max-steps", "1"]),
        ("chat", ["--conversation", "2", "--max-turns", "2"]),
        ("tree_search", ["--width", "2", "--iterations", "1"]),
        ("mcts", ["--simulations", "2", "--parallel", "2"]),
        ("map_reduce", ["--fan-out", "2", "--question", "How do tides work?"]),
    ],
)
def test_agent_runs_as_a_module(module: str, args: list[str]) -> None:
    with echo_server() as (url, engine):
        done = subprocess.run([sys.executable, "-m", f"agentrt.agents.{module}", "--base-url", url, *args],
                              capture_output=True, text=True, timeout=300, cwd=ROOT, check=False)
        calls = len(engine.requests)
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"{calls} LLM calls" in done.stdout  # the summary counts what the server received
    assert calls > 0


def test_agent_runs_as_a_script_too() -> None:
    with echo_server() as (url, _engine):
        done = subprocess.run([sys.executable, str(ROOT / "src" / "agentrt" / "agents" / "map_reduce.py"), "--base-url", url,
                               "--fan-out", "2", "--question", "Why is ice slippery?"],
                              capture_output=True, text=True, timeout=300, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "answer:" in done.stdout


@pytest.mark.slow
def test_agent_runs_on_the_embedded_engine_by_default() -> None:
    done = subprocess.run([sys.executable, "-m", "agentrt.agents.map_reduce", "--fan-out", "2", "--question",
                           "What is the capital of France?"], capture_output=True, text=True, timeout=600,
                          cwd=ROOT, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert "4 LLM calls" in done.stdout and "answer:" in done.stdout
