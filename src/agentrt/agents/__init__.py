"""Reference agent programs: the workloads of ``agentrt bench`` and runnable documentation of the SDK.

Each module is one agent program written with the public SDK only
(``@agentrt.program``, ``@agentrt.tool``, ``agentrt.OpenAI``/``AsyncOpenAI``)
and runnable on its own (``python -m agentrt.agents.react --base-url ...``). The
registry below is how the benchmark drives them: a workload draws seeded
tasks from real data and runs one program per task on an :class:`LLM`.
"""

from __future__ import annotations

import dataclasses
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from typing import Any

import anyio

from agentrt.agents import chat, map_reduce, mcts, react, tree_search
from agentrt.agents.llm import LLM
from agentrt.agents.react import TOOL_POLICIES
from agentrt.agents.trace import CallRecord, ToolRecord, Trace

__all__ = ["LLM", "MIXED", "SIZES", "TOOL_POLICIES", "WORKLOADS", "CallRecord", "ProgramSpec", "ToolRecord", "Trace", "Workload", "sample_programs"]


@dataclass(frozen=True)
class Workload:
    """A kind of agent program: where its tasks come from and how one program runs."""

    name: str
    description: str
    load_tasks: Callable[[int, int], list[Any]]  # (count, seed) -> tasks
    run: Callable[[Any, LLM, int, Any], Awaitable[Any]]  # (task, llm, seed, config) -> the program's result


_threads: anyio.CapacityLimiter | None = None


def _in_thread(program: Callable[..., Any]) -> Callable[[Any, LLM, int, Any], Awaitable[Any]]:
    """Run a synchronous program in a worker thread (its own threads fork from there)."""

    async def run(task: Any, llm: LLM, seed: int, config: Any) -> Any:
        global _threads
        if _threads is None:  # anyio's default limiter (40) would cap concurrent programs
            _threads = anyio.CapacityLimiter(1024)
        return await anyio.to_thread.run_sync(
            partial(program, task, llm, config, seed=seed), limiter=_threads, abandon_on_cancel=True
        )

    return run


async def _chat(task: Any, llm: LLM, seed: int, config: Any) -> Any:
    return await chat.converse(task, llm, config)


async def _mcts(task: Any, llm: LLM, seed: int, config: Any) -> Any:
    return await mcts.mcts(task, llm, config, seed=seed)


async def _map_reduce(task: Any, llm: LLM, seed: int, config: Any) -> Any:
    return await map_reduce.map_reduce(task, llm, config)


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

# Program sizes. ``full``: the agents' defaults, shaped like the paper's workloads (BFCL
# ~10 calls of ~700 prompt / ~34 decode tokens, LATS parallel expansions, ShareGPT
# multi-turn replies). ``small``: the same shapes with fewer steps and shorter decodes,
# so that a CPU-only machine reaches load within minutes. ``varied``: small's calls, with
# programs about as unequal as the paper's: every turn of a ShareGPT conversation (up to 8)
# and of a BFCL task, and tree searches several times longer than those, each drawing its
# own iteration budget (``TreeSearchConfig.iterations_shape``).
SIZES: dict[str, dict[str, Any]] = {
    "full": {
        "react": react.ReactConfig(),
        "chat": chat.ChatConfig(),
        "tree_search": tree_search.TreeSearchConfig(),
        "mcts": mcts.MctsConfig(),
        "map_reduce": map_reduce.MapReduceConfig(),
    },
    "small": {
        "react": react.ReactConfig(max_steps=2, max_turns=3, max_tokens=24),
        "chat": chat.ChatConfig(max_turns=3, max_reply_tokens=48, max_message_chars=600),
        "tree_search": tree_search.TreeSearchConfig(width=3, iterations=2, step_tokens=24, grade_tokens=4,
                                                    answer_tokens=32),
        "mcts": mcts.MctsConfig(simulations=4, parallel=2, max_depth=2, step_tokens=24, rollout_tokens=24,
                                grade_tokens=4, answer_tokens=32),
        "map_reduce": map_reduce.MapReduceConfig(fan_out=3, plan_tokens=32, map_tokens=32, reduce_tokens=32),
    },
}
SIZES["varied"] = {
    **SIZES["small"],
    "react": react.ReactConfig(max_steps=2, max_tokens=24),
    "chat": chat.ChatConfig(max_turns=8, max_reply_tokens=48, max_message_chars=600),
    # No grade ends a search early, so its drawn budget alone sets its length, as in the
    # simulator's LATS; the tree's open nodes bound it.
    "tree_search": tree_search.TreeSearchConfig(width=3, iterations=12, iterations_shape=2.0, max_depth=4,
                                                step_tokens=24, grade_tokens=4, answer_tokens=32,
                                                solved=float("inf")),
}


@dataclass(frozen=True)
class ProgramSpec:
    """One program of a benchmark run: which workload, which task, which seed."""

    index: int
    workload: str
    task: Any
    seed: int
    config: Any  # the workload's config for the chosen size

    async def run(self, llm: LLM) -> Any:
        return await WORKLOADS[self.workload].run(self.task, llm, self.seed, self.config)


def sample_programs(
    workload: str, count: int, seed: int, size: str = "full", tool_policy: str = "model"
) -> list[ProgramSpec]:
    """``count`` programs of ``workload`` (or ``mixed``) at ``size``, the same for the same seed.

    ``tool_policy`` applies to the ReAct programs: ``model`` runs the tools the model
    calls, ``scripted`` the BFCL task's ground-truth calls whatever the model writes (see
    :mod:`agentrt.agents.react`)."""
    if size not in SIZES:
        raise ValueError(f"unknown size {size!r}; expected one of {list(SIZES)}")
    if tool_policy not in TOOL_POLICIES:
        raise ValueError(f"unknown tool policy {tool_policy!r}; expected one of {list(TOOL_POLICIES)}")
    configs = dict(SIZES[size])
    configs["react"] = dataclasses.replace(configs["react"], tool_policy=tool_policy)
    if workload == "mixed":
        kinds = [MIXED[i % len(MIXED)] for i in range(count)]
        random.Random(seed).shuffle(kinds)
    elif workload in WORKLOADS:
        kinds = [workload] * count
    else:
        raise ValueError(f"unknown workload {workload!r}; expected one of {[*WORKLOADS, 'mixed']}")
    tasks = {k: iter(WORKLOADS[k].load_tasks(kinds.count(k), seed)) for k in set(kinds)}
    seeds = [seed * 100_003 + i for i in range(count)]
    return [ProgramSpec(i, k, next(tasks[k]), seeds[i], configs[k]) for i, k in enumerate(kinds)]
