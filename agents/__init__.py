"""Reference agent programs: the workloads of ``agentrt bench`` and runnable documentation of the SDK.

Each module is one agent program written with the public SDK only
(``@agentrt.program``, ``@agentrt.tool``, ``agentrt.OpenAI``/``AsyncOpenAI``)
and runnable on its own (``python -m agents.react --base-url ...``). The
registry below is how the benchmark drives them: a workload draws seeded
tasks from real data and runs one program per task on an :class:`LLM`.
"""

from __future__ import annotations

import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from agents import chat, map_reduce, mcts, react, tree_search
from agents.llm import LLM
from agents.trace import CallRecord, ToolRecord, Trace

__all__ = ["LLM", "MIXED", "WORKLOADS", "CallRecord", "ProgramSpec", "ToolRecord", "Trace", "Workload", "sample_programs"]


@dataclass(frozen=True)
class Workload:
    """A kind of agent program: where its tasks come from and how one program runs."""

    name: str
    description: str
    load_tasks: Callable[[int, int], list[Any]]  # (count, seed) -> tasks
    run: Callable[[Any, LLM, int], Awaitable[Any]]  # (task, llm, seed) -> the program's result


_threads: anyio.CapacityLimiter | None = None


def _in_thread(program: Callable[..., Any]) -> Callable[[Any, LLM, int], Awaitable[Any]]:
    """Run a synchronous program in a worker thread (its own threads fork from there)."""

    async def run(task: Any, llm: LLM, seed: int) -> Any:
        global _threads
        if _threads is None:  # anyio's default limiter (40) would cap concurrent programs
            _threads = anyio.CapacityLimiter(1024)
        return await anyio.to_thread.run_sync(
            partial(program, task, llm, seed=seed), limiter=_threads, abandon_on_cancel=True
        )

    return run


async def _chat(task: Any, llm: LLM, seed: int) -> Any:
    return await chat.converse(task, llm)


async def _mcts(task: Any, llm: LLM, seed: int) -> Any:
    return await mcts.mcts(task, llm, seed=seed)


async def _map_reduce(task: Any, llm: LLM, seed: int) -> Any:
    return await map_reduce.map_reduce(task, llm)


WORKLOADS: dict[str, Workload] = {
    "react": Workload("react", "ReAct tool use over BFCL multi-turn tasks (sequential)", react.load_tasks,
                      _in_thread(react.solve)),
    "chat": Workload("chat", "ShareGPT multi-turn replay (sequential)", chat.load_tasks, _chat),
    "tree_search": Workload("tree_search", "LATS-style search, parallel branches in threads", tree_search.load_tasks,
                            _in_thread(tree_search.search)),
    "mcts": Workload("mcts", "Monte Carlo tree search, parallel rollouts in asyncio tasks", mcts.load_tasks, _mcts),
    "map_reduce": Workload("map_reduce", "fan-out of sub-questions with asyncio.gather, then reduce",
                           map_reduce.load_tasks, _map_reduce),
}

# The Autellix paper's mixed workload: equal parts chat (ShareGPT), ReAct (BFCL) and LATS.
MIXED = ("chat", "react", "tree_search")


@dataclass(frozen=True)
class ProgramSpec:
    """One program of a benchmark run: which workload, which task, which seed."""

    index: int
    workload: str
    task: Any
    seed: int


def sample_programs(workload: str, count: int, seed: int) -> list[ProgramSpec]:
    """``count`` programs of ``workload`` (or ``mixed``), the same for the same seed."""
    if workload == "mixed":
        kinds = [MIXED[i % len(MIXED)] for i in range(count)]
        random.Random(seed).shuffle(kinds)
    elif workload in WORKLOADS:
        kinds = [workload] * count
    else:
        raise ValueError(f"unknown workload {workload!r}; expected one of {[*WORKLOADS, 'mixed']}")
    tasks = {k: iter(WORKLOADS[k].load_tasks(kinds.count(k), seed)) for k in set(kinds)}
    return [ProgramSpec(i, k, next(tasks[k]), seed * 100_003 + i) for i, k in enumerate(kinds)]
