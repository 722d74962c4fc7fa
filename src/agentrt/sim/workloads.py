"""Workload generators: seeded streams of agent programs built from real data where it exists.

- ``sharegpt``: one program per real ShareGPT conversation, one call per
  assistant turn; each prompt holds a shared system prompt and the whole
  history so far (ChatML framing, :data:`CHAT_FRAME_TOKENS` per message). The
  conversation is replayed back to back (no human think time, as in the
  paper). A conversation stops at the first turn whose context would exceed
  ``max_context`` (the model's context length), as a chat client would.
- ``bfcl``: one program per real BFCL v4 multi-turn task. Every call's prompt
  starts with the task's function docs (real JSON docs, shared by all tasks
  over the same APIs), then the history. Per user turn the agent makes one
  call per ground-truth function call (decode = that call's real text), each
  followed by the tool's latency and its result, then one call that answers
  the user. Tool latencies and result sizes are not in the data: lognormal,
  :data:`BFCL_TOOL_SECONDS` and :data:`BFCL_RESULT_TOKENS` (median, sigma).
- ``lats``: LATS tree search (MCTS over a QA task with a search tool). No
  traces are published, so it is synthetic, shaped to the Autellix paper's
  figures (~160 calls per program, max ~400; ~467 prefill / ~73 decode tokens
  per call): iterations of 5 parallel expansions of a selected node (each
  followed by a search-tool call) and 5 parallel value evaluations of the new
  children; the next iteration waits for all of them.
- ``mixed``: equal numbers of the three, in random order.

Token counts of real text come from :func:`agentrt.datasets.load_token_counter`
(the SmolLM2 tokenizer; Llama-3's is not available offline, it counts ~10%
fewer tokens on English text). Every generator is a pure function of its seed.
"""

from __future__ import annotations

import json
import math
import random
from collections.abc import Callable, Sequence

from agentrt.datasets import BfclTask, ConversationTokens, TokenCounter
from agentrt.datasets.bfcl import TOOL_SECONDS
from agentrt.sim.spec import CallSpec, ProgramSpec, Segment

WORKLOADS = ("sharegpt", "bfcl", "lats", "mixed")
CHAT_FRAME_TOKENS = 5  # <|im_start|> role \n ... <|im_end|> \n
ASSISTANT_PROMPT_TOKENS = 3  # <|im_start|> assistant \n, then the model writes
CHAT_SYSTEM_TOKENS = 32
BFCL_TOOL_SECONDS = TOOL_SECONDS
BFCL_RESULT_TOKENS = (40.0, 0.8)
BFCL_ANSWER_TOKENS = (30.0, 0.5)
BFCL_CALL_FRAME_TOKENS = 8  # the tool-call wrapper around the call text


class Workload:
    """A generator of programs; :meth:`generate` is deterministic in ``rng``'s state."""

    name: str = ""

    def program(self, index: int, rng: random.Random) -> ProgramSpec:
        raise TypeError(f"{type(self).__name__} does not define program()")

    def generate(self, n: int, seed: int) -> list[ProgramSpec]:
        rng = random.Random(seed)
        return [self.program(i, rng) for i in range(n)]


def _lognormal(rng: random.Random, median: float, sigma: float) -> float:
    return median * math.exp(rng.gauss(0.0, sigma))


class SharegptWorkload(Workload):
    name = "sharegpt"

    def __init__(self, table: Sequence[ConversationTokens], max_context: int = 8192) -> None:
        self.table = [c for c in table if self._fits(c, max_context)]
        if not self.table:
            raise ValueError("no ShareGPT conversation has a turn that fits the context length")
        self.max_context = max_context

    @staticmethod
    def _fits(conversation: ConversationTokens, max_context: int) -> bool:
        used = CHAT_SYSTEM_TOKENS
        for role, tokens in zip(conversation.roles, conversation.tokens, strict=True):
            if role == "assistant":
                return used + ASSISTANT_PROMPT_TOKENS + tokens + 1 <= max_context
            used += tokens + CHAT_FRAME_TOKENS
        return False

    def program(self, index: int, rng: random.Random) -> ProgramSpec:
        conversation = self.table[rng.randrange(len(self.table))]
        pid = f"sharegpt-{index}"
        history = 0  # tokens after the system prompt
        calls: list[CallSpec] = []
        for role, tokens in zip(conversation.roles, conversation.tokens, strict=True):
            if role == "assistant":
                prompt = CHAT_SYSTEM_TOKENS + history + ASSISTANT_PROMPT_TOKENS
                decode = tokens + 1
                if prompt + decode > self.max_context:
                    break
                n = len(calls)
                segments: tuple[Segment, ...] = (
                    ("chat:system", CHAT_SYSTEM_TOKENS),
                    (pid, history + ASSISTANT_PROMPT_TOKENS + decode),
                )
                calls.append(CallSpec(n, segments, prompt, decode, (n - 1,) if n else ()))
                history += ASSISTANT_PROMPT_TOKENS + decode + 1
            else:
                history += tokens + CHAT_FRAME_TOKENS
        return ProgramSpec(pid, self.name, calls)


class BfclTaskTokens:
    """The token view of one BFCL task: docs key and size, per-turn user and call tokens."""

    __slots__ = ("call_tokens", "docs_key", "docs_tokens", "user_tokens")

    def __init__(self, task: BfclTask, counter: TokenCounter, docs_cache: dict[str, int]) -> None:
        self.docs_key = "bfcl:docs:" + ",".join(sorted(d["name"] for d in task.function_docs))
        if self.docs_key not in docs_cache:
            docs_cache[self.docs_key] = (
                counter.count(json.dumps(task.function_docs)) + CHAT_FRAME_TOKENS
            )
        self.docs_tokens = docs_cache[self.docs_key]
        self.user_tokens = [
            sum(counter.count(m.get("content", "")) + CHAT_FRAME_TOKENS for m in turn)
            for turn in task.turns
        ]
        self.call_tokens = [
            [counter.count(c) + BFCL_CALL_FRAME_TOKENS for c in calls]
            for calls in task.ground_truth
        ]


class BfclWorkload(Workload):
    name = "bfcl"

    def __init__(
        self, tasks: Sequence[BfclTask], counter: TokenCounter, max_context: int = 8192
    ) -> None:
        docs_cache: dict[str, int] = {}
        self.tasks = [BfclTaskTokens(t, counter, docs_cache) for t in tasks]
        self.tasks = [t for t in self.tasks if t.docs_tokens + 64 <= max_context]
        if not self.tasks:
            raise ValueError("no BFCL task's function docs fit the context length")
        self.max_context = max_context

    def program(self, index: int, rng: random.Random) -> ProgramSpec:
        task = self.tasks[rng.randrange(len(self.tasks))]
        pid = f"bfcl-{index}"
        docs = task.docs_tokens
        history = 0
        calls: list[CallSpec] = []
        pending_delay = 0.0
        for user, call_tokens in zip(task.user_tokens, task.call_tokens, strict=True):
            history += user
            answer = max(2, round(_lognormal(rng, *BFCL_ANSWER_TOKENS)))
            for decode in [*call_tokens, answer]:
                prompt = docs + history + ASSISTANT_PROMPT_TOKENS
                if prompt + decode > self.max_context:
                    return ProgramSpec(pid, self.name, calls or [self._minimal(pid, docs)])
                n = len(calls)
                segments = (
                    (task.docs_key, docs),
                    (pid, history + ASSISTANT_PROMPT_TOKENS + decode),
                )
                calls.append(
                    CallSpec(n, segments, prompt, decode, (n - 1,) if n else (), pending_delay)
                )
                history += ASSISTANT_PROMPT_TOKENS + decode + 1
                pending_delay = 0.0
                if (
                    decode is not answer
                ):  # a tool ran: its latency, then its result joins the history
                    pending_delay = _lognormal(rng, *BFCL_TOOL_SECONDS)
                    history += round(_lognormal(rng, *BFCL_RESULT_TOKENS)) + CHAT_FRAME_TOKENS
        return ProgramSpec(pid, self.name, calls)

    def _minimal(self, pid: str, docs: int) -> CallSpec:
        return CallSpec(
            0,
            (("bfcl:docs", docs), (pid, ASSISTANT_PROMPT_TOKENS + 1)),
            docs + ASSISTANT_PROMPT_TOKENS,
            1,
        )


class LatsWorkload(Workload):
    """LATS-shaped tree search; the constants below reproduce the paper's per-call averages."""

    name = "lats"
    children = 5
    mean_iterations = 16.0
    max_iterations = 40
    max_depth = 4
    fewshot_tokens = (
        95  # instructions and examples shared by all programs (calibrated: 467 mean prefill)
    )
    question_tokens = (30.0, 0.4)
    thought_action_tokens = (80.0, 0.35)  # expansion output
    observation_tokens = (45.0, 0.5)  # search-tool result appended to the node
    value_prompt_tokens = 40  # the value instruction after the trajectory
    value_tokens = (55.0, 0.35)  # value-evaluation output
    tool_seconds = (0.4, 0.6)

    def program(self, index: int, rng: random.Random) -> ProgramSpec:
        pid = f"lats-{index}"
        question = max(8, round(_lognormal(rng, *self.question_tokens)))
        root: tuple[Segment, ...] = (("lats:fewshot", self.fewshot_tokens), (f"{pid}:q", question))
        nodes: list[tuple[tuple[Segment, ...], int]] = [(root, 0)]  # (trajectory, depth)
        iterations = min(
            self.max_iterations, max(1, round(rng.gammavariate(2.0, self.mean_iterations / 2)))
        )
        calls: list[CallSpec] = []
        previous: tuple[int, ...] = ()
        for _ in range(iterations):
            expandable = [n for n in nodes if n[1] < self.max_depth]
            trajectory, depth = expandable[rng.randrange(len(expandable))]
            context = sum(t for _, t in trajectory)
            level: list[int] = []
            for _child in range(self.children):
                node_key = f"{pid}:n{len(calls)}"
                decode = max(4, round(_lognormal(rng, *self.thought_action_tokens)))
                observation = max(4, round(_lognormal(rng, *self.observation_tokens)))
                expand = len(calls)
                calls.append(
                    CallSpec(expand, (*trajectory, (node_key, decode)), context, decode, previous)
                )
                child = (*trajectory, (node_key, decode + observation))
                nodes.append((child, depth + 1))
                value_decode = max(2, round(_lognormal(rng, *self.value_tokens)))
                value_prompt = context + decode + observation + self.value_prompt_tokens
                value_segments = (
                    *child,
                    (f"{pid}:v{len(calls)}", self.value_prompt_tokens + value_decode),
                )
                delay = _lognormal(rng, *self.tool_seconds)
                calls.append(
                    CallSpec(
                        len(calls), value_segments, value_prompt, value_decode, (expand,), delay
                    )
                )
                level.append(len(calls) - 1)
            previous = tuple(level)
        for i, call in enumerate(calls):
            call.thread = i % self.children
        return ProgramSpec(pid, self.name, calls)


class MixedWorkload(Workload):
    """Equal parts of several workloads, in random order."""

    name = "mixed"

    def __init__(self, parts: Sequence[Workload]) -> None:
        if not parts:
            raise ValueError("a mixed workload needs parts")
        self.parts = list(parts)

    def generate(self, n: int, seed: int) -> list[ProgramSpec]:
        rng = random.Random(seed)
        kinds = [i % len(self.parts) for i in range(n)]
        rng.shuffle(kinds)
        return [self.parts[k].program(i, rng) for i, k in enumerate(kinds)]


def poisson_arrivals(programs: Sequence[ProgramSpec], rate: float, seed: int) -> list[ProgramSpec]:
    """The programs arriving as a Poisson process of ``rate`` programs/s (first at t=0).

    The unit-rate gaps depend only on ``seed``, so a sweep over rates replays
    the same programs in the same order, only compressed or stretched.
    """
    if not rate > 0:
        raise ValueError("arrival rate must be > 0")
    rng = random.Random(seed ^ 0x5EED)
    t = 0.0
    out: list[ProgramSpec] = []
    for i, program in enumerate(programs):
        if i:
            t += rng.expovariate(1.0) / rate
        out.append(program.at(t))
    return out


def make_workload(
    name: str,
    *,
    max_context: int = 8192,
    sharegpt_limit: int | None = None,
    bfcl_limit: int | None = None,
) -> Workload:
    """A workload by name, reading the real data it needs (cached where slow)."""
    from agentrt.datasets import load_bfcl_tasks, load_conversation_tokens, load_token_counter

    builders: dict[str, Callable[[], Workload]] = {
        "sharegpt": lambda: SharegptWorkload(load_conversation_tokens(sharegpt_limit), max_context),
        "bfcl": lambda: BfclWorkload(
            load_bfcl_tasks(limit=bfcl_limit), load_token_counter(), max_context
        ),
        "lats": LatsWorkload,
    }
    if name == "mixed":
        return MixedWorkload([builders[k]() for k in ("sharegpt", "bfcl", "lats")])
    if name not in builders:
        raise ValueError(f"unknown workload {name!r}; expected one of {', '.join(WORKLOADS)}")
    return builders[name]()
