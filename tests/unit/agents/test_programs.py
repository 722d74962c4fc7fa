"""Each reference agent runs end to end on a real agentrt server (over the EchoEngine).

The echo model repeats the last message, which is as useless as a model can
be: the agents must still finish within their budgets, with the call shapes
(count, fan-out, threads of one program) their design promises.
"""

from __future__ import annotations

import asyncio
import dataclasses
import statistics
from collections.abc import Iterator

import pytest
from tests.unit.agents.live_server import echo_server

import agentrt
from agentrt.agents import LLM, SIZES, WORKLOADS, Trace, sample_programs
from agentrt.agents.chat import ChatConfig, converse, replay_plan
from agentrt.agents.map_reduce import MapReduceConfig, map_reduce
from agentrt.agents.mcts import MctsConfig, mcts
from agentrt.agents.react import ReactConfig, solve
from agentrt.agents.tree_search import TreeSearchConfig, search
from agentrt.datasets import BfclTask, Conversation, Turn, load_bfcl_tasks

QUESTION = "Why is the sky blue during the day but red at sunset?"


@pytest.fixture(scope="module")
def server() -> Iterator[tuple[str, object]]:
    with echo_server(token_delay=0.002) as running:
        yield running


def make_llm(url: str) -> LLM:
    return LLM(model="echo", client=agentrt.OpenAI(base_url=url, api_key="x"),
               aclient=agentrt.AsyncOpenAI(base_url=url, api_key="x"), trace=Trace())


def programs_seen(engine, since: int) -> dict[str, set[str]]:
    """program id -> thread ids, of the calls the engine received after ``since``."""
    seen: dict[str, set[str]] = {}
    for request in engine.requests[since:]:
        assert request.program is not None, "every agent call carries its program"
        seen.setdefault(request.program.program_id, set()).add(request.program.thread_id)
    return seen


def test_react_without_usable_actions_stops_at_its_step_budget(server) -> None:
    url, engine = server
    task = load_bfcl_tasks(("base",))[0]
    llm, before = make_llm(url), len(engine.requests)
    answers = solve(task, llm, ReactConfig(max_steps=2, tool_latency_scale=0.0))
    assert answers == [""] * len(task.turns)
    assert len(llm.trace.calls) == 2 * len(task.turns) and not llm.trace.tools
    assert len(programs_seen(engine, before)) == 1
    # The tool list is in the system prompt: BFCL's calls are prefill-heavy.
    assert min(c.prompt_tokens for c in llm.trace.calls) > 200


def test_react_executes_the_actions_the_model_writes(server) -> None:
    url, _engine = server
    base = load_bfcl_tasks(("base",))[0]
    task = BfclTask(id="t", category="base", apis=base.apis, function_docs=base.function_docs, ground_truth=[[]],
                    initial_config=base.initial_config, turns=[
                        [{"role": "user", "content": 'Action: {"name": "cd", "arguments": {"folder": "document"}}'}],
                        [{"role": "user", "content": "Final Answer: nothing left to do"}],
                    ])
    llm = make_llm(url)
    answers = solve(task, llm, ReactConfig(max_steps=3, tool_latency_scale=0.0))
    assert [t.name for t in llm.trace.tools] == ["cd"]
    assert answers[1] == "nothing left to do"
    assert len(llm.trace.calls) == 3 + 1  # turn 1: action, then two unparseable observations echoed back


def test_chat_makes_one_call_per_replayed_assistant_turn(server) -> None:
    url, _engine = server
    conversation = Conversation("c", [Turn("user", "hi"), Turn("assistant", "hello " * 20),
                                      Turn("user", "tell me more"), Turn("assistant", "more " * 40)])
    llm = make_llm(url)
    replies = asyncio.run(converse(conversation, llm, ChatConfig(max_reply_tokens=16)))
    plan = replay_plan(conversation, ChatConfig(max_reply_tokens=16))
    assert len(replies) == len(llm.trace.calls) == len(plan) == 2
    assert [c.completion_tokens for c in llm.trace.calls] == [1, 3]  # echo of "hi", "tell me more"
    assert all(c.ttft is not None and c.ttft >= 0 for c in llm.trace.calls)


def test_tree_search_expands_branches_in_parallel_threads_of_one_program(server) -> None:
    url, engine = server
    llm, before = make_llm(url), len(engine.requests)
    config = TreeSearchConfig(width=3, iterations=2)
    answer = search(QUESTION, llm, config)
    assert isinstance(answer, str)
    assert len(llm.trace.calls) == config.iterations * config.width * 2 + 1
    [(_program_id, threads)] = programs_seen(engine, before).items()
    assert len(threads) >= config.width  # each branch is a thread of the program
    first = llm.trace.calls[: config.width * 2]
    starts = sorted(c.start for c in first)
    assert starts[config.width - 1] < min(c.end for c in first)  # the branches' first calls overlap


def test_mcts_runs_its_rollouts_concurrently(server) -> None:
    url, engine = server
    llm, before = make_llm(url), len(engine.requests)
    config = MctsConfig(simulations=4, parallel=2, max_depth=2)
    asyncio.run(mcts(QUESTION, llm, config))
    assert len(llm.trace.calls) == config.simulations * 3 + 1
    [(_program_id, threads)] = programs_seen(engine, before).items()
    assert len(threads) >= config.parallel


def test_map_reduce_fans_out_to_n_threads_then_reduces(server) -> None:
    url, engine = server
    llm, before = make_llm(url), len(engine.requests)
    asyncio.run(map_reduce(QUESTION, llm, MapReduceConfig(fan_out=5)))
    assert len(llm.trace.calls) == 1 + 5 + 1
    [(_program_id, threads)] = programs_seen(engine, before).items()
    assert len(threads) >= 5
    mapped = llm.trace.calls[1:6]
    assert max(c.start for c in mapped) < min(c.end for c in mapped)  # all in flight at once
    # The trace places every call in the program's DAG: the fan-out forks after the plan call.
    plan, reduce = llm.trace.calls[0], llm.trace.calls[-1]
    assert plan.call_id is not None and all(c.parent_call_id == plan.call_id for c in mapped)
    # Five parallel threads: the first branch to call continues the plan's thread, the others fork.
    mapped_threads = [c.thread_id for c in mapped]
    assert len(set(mapped_threads)) == 5 and mapped_threads.count(plan.thread_id) == 1
    assert reduce.thread_id == plan.thread_id
    assert all(c.server_model_time is not None and c.server_queue_time is not None for c in llm.trace.calls)


def test_varied_size_gives_each_tree_search_its_own_iteration_budget() -> None:
    specs = sample_programs("tree_search", 200, seed=3, size="varied")
    budgets = [s.config.budget(s.seed) for s in specs]
    assert budgets == [s.config.budget(s.seed) for s in sample_programs("tree_search", 200, seed=3, size="varied")]
    mean = SIZES["varied"]["tree_search"].iterations
    assert abs(statistics.mean(budgets) - mean) < 0.15 * mean
    assert max(budgets) >= 2 * mean and min(budgets) <= mean / 3  # a long tail, as the simulator's LATS
    # The programs share their size's configs; other sizes run the same budget every time.
    mixed = sample_programs("mixed", 9, seed=3, size="varied")
    assert all(s.config == SIZES["varied"][s.workload] for s in mixed)
    small = sample_programs("tree_search", 20, seed=3, size="small")
    assert {s.config.budget(s.seed) for s in small} == {SIZES["small"]["tree_search"].iterations}


def test_varied_tree_search_runs_its_whole_budget(server) -> None:
    url, _engine = server
    config = dataclasses.replace(SIZES["varied"]["tree_search"], iterations=5)
    seed = next(s for s in range(100) if config.budget(s) != config.iterations)
    llm = make_llm(url)
    search(QUESTION, llm, config, seed=seed)
    # No grade ends it early: every iteration of the drawn budget expands width branches,
    # each proposed and graded.
    assert len(llm.trace.calls) == config.budget(seed) * config.width * 2 + 1


def test_every_workload_samples_reproducibly_and_runs(server) -> None:
    url, _engine = server
    specs = sample_programs("mixed", 6, seed=7)
    assert [s.workload for s in specs] == [s.workload for s in sample_programs("mixed", 6, seed=7)]
    assert sorted(s.workload for s in specs) == ["chat", "chat", "react", "react", "tree_search", "tree_search"]
    with pytest.raises(ValueError, match="unknown workload"):
        sample_programs("nope", 1, 0)
    with pytest.raises(ValueError, match="unknown size"):
        sample_programs("chat", 1, 0, size="huge")

    async def run_all() -> None:
        for name in WORKLOADS:
            for size in SIZES:
                [spec] = sample_programs(name, 1, seed=1, size=size)
                llm = make_llm(url)
                await spec.run(llm)
                assert llm.trace.calls, (name, size)

    asyncio.run(run_all())
