"""The ReAct agent's scripted tool policy: BFCL's ground-truth calls, run with real tool delays.

Over the echo engine (whose replies are never a usable action) a scripted
program still calls its tools, sleeps each tool's drawn latency between two
LLM calls, and the server hears the tool signals and the interrupt time.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from tests.unit.agents.live_server import echo_server

import agentrt
from agentrt.agents import LLM, SIZES, Trace, sample_programs
from agentrt.agents.bfcl_env import Environment
from agentrt.agents.react import ReactConfig, ground_truth_calls, solve
from agentrt.cli import main
from agentrt.datasets import BfclTask, load_bfcl_tasks
from agentrt.datasets.bfcl import TOOL_SECONDS
from agentrt.protocol.programs import ToolEvent
from agentrt.testing.echo import EchoEngine


class ToolTimingEngine(EchoEngine):
    """An echo engine that hears tool signals and records when each arrived."""

    def __init__(self) -> None:
        super().__init__(token_delay=0.001)
        self.tool_events: list[tuple[float, str, str, str | None]] = []

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        self.tool_events.append((time.monotonic(), program_id, event.state, event.tool))


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, ToolTimingEngine]]:
    engine = ToolTimingEngine()
    with echo_server(engine=engine) as (url, _):
        yield url, engine


def make_llm(url: str) -> LLM:
    return LLM(
        model="echo",
        client=agentrt.OpenAI(base_url=url, api_key="x"),
        aclient=agentrt.AsyncOpenAI(base_url=url, api_key="x"),
        trace=Trace(),
    )


def test_a_scripted_program_waits_its_tool_delays_and_the_server_hears_them(server) -> None:
    url, engine = server
    task = load_bfcl_tasks(("base",))[0]
    config = ReactConfig(max_steps=2, max_turns=3, tool_latency_scale=0.25, tool_policy="scripted")
    expected = [ground_truth_calls(task, turn)[0].name for turn in range(3)]
    draws_from = Environment(
        task, latency_scale=0.25, seed=5, tool_seconds=TOOL_SECONDS, sleep=lambda s: None
    )
    delays = [draws_from.latency(name) for name in expected]
    llm, seen = make_llm(url), len(engine.tool_events)

    @agentrt.program
    def run() -> tuple[list[str], str, dict]:
        answers = solve(task, llm, config, seed=5)
        program = agentrt.current_program()
        assert program is not None
        return (
            answers,
            program.program_id,
            llm.client.get(f"/programs/{program.program_id}", cast_to=dict),
        )

    answers, program_id, info = run()
    calls, tools = llm.trace.calls, llm.trace.tools
    assert (
        len(answers) == 3 and len(calls) == 6
    )  # per turn: one call before its tool, one answering
    assert [t.name for t in tools] == expected == ["cd", "cd", "sort"]
    for k, (tool, delay) in enumerate(zip(tools, delays, strict=True)):
        assert tool.end - tool.start >= delay  # the drawn latency was slept
        assert calls[2 * k].end <= tool.start and tool.end <= calls[2 * k + 1].start
    # The tool's observation (a real file-system result) is what the next call reads.
    observations = [
        r.messages[-1]["content"]
        for r in engine.requests
        if r.messages and str(r.messages[-1]["content"]).startswith("Observation (cd):")
    ]
    assert observations and "current_working_directory" in observations[0]
    # The server heard each tool's start and end, at least its delay apart, ...
    events = [e for e in engine.tool_events[seen:] if e[1] == program_id]
    assert [e[2] for e in events] == ["start", "end"] * 3
    assert all(str(e[3]).endswith("run_tool") for e in events)
    for (started, *_), (ended, *_), delay in zip(events[::2], events[1::2], delays, strict=True):
        assert ended - started >= delay
    # ... and counted the time between the calls as the program's interrupt.
    assert info["num_calls"] == 6 and info["interrupt_seconds"] >= sum(delays)


def test_max_steps_bounds_the_scripted_calls_of_a_turn(server) -> None:
    url, _engine = server
    base = load_bfcl_tasks(("base",))[0]
    task = BfclTask(
        id="t",
        category="base",
        apis=base.apis,
        function_docs=base.function_docs,
        initial_config=base.initial_config,
        turns=[
            [{"role": "user", "content": "hello"}],
            [{"role": "user", "content": "look around"}],
        ],
        ground_truth=[[], ["cd(folder='document')", "ls()", "pwd()"]],
    )
    llm = make_llm(url)
    solve(task, llm, ReactConfig(max_steps=3, tool_latency_scale=0.0, tool_policy="scripted"))
    assert (
        len(llm.trace.calls) == 1 + 3
    )  # turn 0: no tool, one answer; turn 1: two tools, then the answer
    assert [t.name for t in llm.trace.tools] == ["cd", "ls"]


def test_the_tool_policy_is_validated_and_reaches_the_sampled_react_programs() -> None:
    with pytest.raises(ValueError, match="unknown tool policy"):
        ReactConfig(tool_policy="oracle")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_steps"):
        ReactConfig(max_steps=0)
    with pytest.raises(ValueError, match="unknown tool policy"):
        sample_programs("react", 1, 0, tool_policy="oracle")
    specs = sample_programs("mixed", 6, seed=7, size="small", tool_policy="scripted")
    assert {s.config.tool_policy for s in specs if s.workload == "react"} == {"scripted"}
    assert SIZES["small"]["react"].tool_policy == "model"  # the sizes' defaults are left alone
    assert {s.config.tool_policy for s in sample_programs("react", 2, seed=7)} == {"model"}


def test_bench_serve_runs_scripted_react_programs_with_tool_time(tmp_path: Path) -> None:
    out = tmp_path / "scripted.json"
    with echo_server(token_delay=0.001) as (url, _engine):
        code = main(
            [
                "bench",
                "serve",
                "--base-url",
                url,
                "--workload",
                "react",
                "--size",
                "small",
                "--tool-policy",
                "scripted",
                "--num-programs",
                "2",
                "--rate",
                "20",
                "--json",
                str(out),
                "--no-progress",
            ]
        )
    assert code == 0
    result = json.loads(out.read_text())
    assert result["tool_policy"] == "scripted"
    [programs] = result["systems"][0]["programs"]
    # small: 3 turns of 2 calls each, a ground-truth tool between them (median 0.3 s)
    assert all(len(p["calls"]) == 6 and p["tool_time"] > 0.05 for p in programs)
