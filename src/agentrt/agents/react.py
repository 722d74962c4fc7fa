"""ReAct agent over real BFCL multi-turn tasks: think, call a tool, observe, repeat.

Each user turn of a BFCL task gets up to ``max_steps`` LLM calls. The model
answers ``Action: {"name": ..., "arguments": {...}}`` to call a tool or
``Final Answer: ...`` to end the turn; servers that return native
``tool_calls`` work too. Tools run in the simulated environment of
:mod:`agentrt.agents.bfcl_env` through an ``@agentrt.tool`` function, so their time
counts as the program's interruption, not its service. Anything the model
writes is handled: an unparseable reply gets an observation saying so and
the step budget bounds the turn.

``tool_policy="scripted"`` is for benchmarks on models too small to call
tools (SmolLM2-135M writes no usable action): each turn's steps are the BFCL
task's ground-truth calls, whatever the model writes. Every call but the last
of a turn (up to ``max_steps``) is followed by the next ground-truth call, run
in the environment through the same ``@agentrt.tool`` function, with the
simulator's tool latency (:data:`agentrt.datasets.bfcl.TOOL_SECONDS`); the
model's reply stays in the history as it wrote it, and the turn's last call
answers it. Programs then have the shape of the simulator's ``bfcl``
workload, and the same shape on every server, so two systems compared see
the same tool waits.

Run it alone::

    python -m agentrt.agents.react --base-url http://localhost:8000/v1 --task 3
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from typing import Any, Literal

import agentrt
from agentrt.agents.bfcl_env import Environment
from agentrt.agents.llm import LLM, ToolCall
from agentrt.datasets import BfclTask, load_bfcl_tasks, parse_call
from agentrt.datasets.bfcl import TOOL_SECONDS

ToolPolicy = Literal["model", "scripted"]
TOOL_POLICIES: tuple[ToolPolicy, ...] = ("model", "scripted")

SYSTEM = """You are an assistant that completes the user's requests by calling functions.
To call a function, reply with exactly one line:
Action: {"name": "<function name>", "arguments": {<arguments as JSON>}}
You will then see an Observation with the result. When the request is done, reply:
Final Answer: <one sentence saying what you did>

Functions:
"""


@dataclass(frozen=True)
class ReactConfig:
    max_steps: int = 4  # LLM calls per user turn
    max_turns: int | None = None  # user turns replayed (None: all of the task's)
    max_tokens: int = 64  # per call (BFCL calls decode ~34 tokens on average)
    tool_latency_scale: float = 1.0
    native_tools: bool = False  # also send the OpenAI ``tools`` list (servers that parse tool calls)
    tool_policy: ToolPolicy = "model"  # "scripted": the steps are the task's ground-truth calls

    def __post_init__(self) -> None:
        if self.max_steps < 1:
            raise ValueError("max_steps must be at least 1")
        if self.tool_policy not in TOOL_POLICIES:
            raise ValueError(f"unknown tool policy {self.tool_policy!r}; expected one of {TOOL_POLICIES}")


def describe(doc: dict[str, Any]) -> str:
    """One compact line per function, as ReAct prompts list their tools."""
    props = doc.get("parameters", {}).get("properties", {})
    required = set(doc.get("parameters", {}).get("required", []))
    params = ", ".join(f"{k}{'' if k in required else '?'}: {v.get('type', 'any')}" for k, v in props.items())
    summary = doc.get("description", "").split("Tool description:")[-1].strip()
    return f"- {doc['name']}({params}): {summary[:160]}"


def parse_actions(text: str) -> list[ToolCall]:
    """Tool calls written in the reply text: JSON objects with a ``name`` after ``Action:`` (or bare)."""
    decoder = json.JSONDecoder()
    calls: list[ToolCall] = []
    pos = 0
    while (start := text.find("{", pos)) != -1:
        try:
            obj, end = decoder.raw_decode(text, start)
        except json.JSONDecodeError:
            pos = start + 1
            continue
        pos = end
        if isinstance(obj, dict) and isinstance(obj.get("name"), str):
            args = obj.get("arguments", obj.get("parameters", {}))
            calls.append(ToolCall(name=obj["name"], arguments=args if isinstance(args, str) else json.dumps(args)))
    return calls


def decode_arguments(raw: str) -> Any:
    """The model's argument string as JSON; anything else becomes an error observation later."""
    try:
        return json.loads(raw) if raw.strip() else {}
    except json.JSONDecodeError:
        return None


@agentrt.tool
def run_tool(env: Environment, llm: LLM, call: ToolCall) -> str:
    """Execute one tool call in the simulated environment (the program's interruption time)."""
    with llm.trace.tool(call.name):
        return env.execute(call.name, decode_arguments(call.arguments))


@agentrt.program
def solve(task: BfclTask, llm: LLM, config: ReactConfig = ReactConfig(), seed: int = 0) -> list[str]:
    """Work through every user turn of ``task``; return the final answer of each turn."""
    scripted = config.tool_policy == "scripted"
    env = Environment(
        task, latency_scale=config.tool_latency_scale, seed=seed, tool_seconds=TOOL_SECONDS if scripted else None
    )
    tools = env.tools() if config.native_tools else None
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM + "\n".join(describe(d) for d in env.docs)}
    ]
    answers: list[str] = []
    for i, turn in enumerate(task.turns[: config.max_turns]):
        messages.extend({"role": m.get("role", "user"), "content": m.get("content", "")} for m in turn)
        if scripted:
            calls = ground_truth_calls(task, i)
            answers.append(_run_scripted_turn(env, llm, messages, tools, calls, config))
        else:
            answers.append(_run_turn(env, llm, messages, tools, config))
    return answers


def ground_truth_calls(task: BfclTask, turn: int) -> list[ToolCall]:
    """The calls a correct agent makes in ``turn`` of ``task`` (none past the recorded turns)."""
    if turn >= len(task.ground_truth):
        return []
    calls = []
    for expression in task.ground_truth[turn]:
        name, arguments = parse_call(expression, task.function_docs)
        calls.append(ToolCall(name=name, arguments=json.dumps(arguments)))
    return calls


def _run_scripted_turn(
    env: Environment,
    llm: LLM,
    messages: list[dict[str, Any]],
    tools: list[dict[str, Any]] | None,
    calls: list[ToolCall],
    config: ReactConfig,
) -> str:
    """One call per ground-truth call (up to ``max_steps - 1``), each followed by that call's
    tool run and observation, then the call that answers the turn."""
    for call in calls[: config.max_steps - 1]:
        reply = llm.chat(messages, max_tokens=config.max_tokens, tools=tools)
        messages.append({"role": "assistant", "content": reply.text})
        messages.append({"role": "user", "content": f"Observation ({call.name}): {run_tool(env, llm, call)}"})
    reply = llm.chat(messages, max_tokens=config.max_tokens, tools=tools)
    messages.append({"role": "assistant", "content": reply.text})
    return reply.text.split("Final Answer:", 1)[-1].strip()


def _run_turn(
    env: Environment, llm: LLM, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, config: ReactConfig
) -> str:
    for _ in range(config.max_steps):
        reply = llm.chat(messages, max_tokens=config.max_tokens, tools=tools)
        if reply.tool_calls:  # the server parsed a native function call
            messages.append({
                "role": "assistant",
                "content": reply.text or None,
                "tool_calls": [
                    {"id": c.id or f"call_{i}", "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
                    for i, c in enumerate(reply.tool_calls)
                ],
            })
            for i, call in enumerate(reply.tool_calls):
                result = run_tool(env, llm, call)
                messages.append({"role": "tool", "tool_call_id": call.id or f"call_{i}", "content": result})
            continue
        messages.append({"role": "assistant", "content": reply.text})
        if "Final Answer:" in reply.text:
            return reply.text.split("Final Answer:", 1)[1].strip()
        actions = parse_actions(reply.text)
        if not actions:
            messages.append({
                "role": "user",
                "content": "Observation: no Action found. Reply with an Action line or a Final Answer.",
            })
            continue
        observations = [f"Observation ({a.name}): {run_tool(env, llm, a)}" for a in actions[:3]]
        messages.append({"role": "user", "content": "\n".join(observations)})
    return ""  # the step budget ran out: the turn ends without an answer


def load_tasks(count: int, seed: int) -> list[BfclTask]:
    """``count`` BFCL multi-turn base tasks drawn with ``seed`` (with replacement past 200)."""
    tasks = load_bfcl_tasks(("base",))
    rng = random.Random(seed)
    return [rng.choice(tasks) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    from agentrt.agents.runner import agent_arguments, run_agent

    parser = agent_arguments(__doc__ or "")
    parser.add_argument("--task", type=int, default=0, help="index of the BFCL multi-turn base task")
    parser.add_argument("--max-steps", type=int, default=ReactConfig.max_steps)
    parser.add_argument("--tool-policy", choices=TOOL_POLICIES, default="model",
                        help="scripted: run the task's ground-truth calls whatever the model writes")
    args = parser.parse_args(argv)
    task = load_bfcl_tasks(("base",))[args.task]
    config = ReactConfig(max_steps=args.max_steps, tool_policy=args.tool_policy)
    answers = run_agent(args, lambda llm: solve(task, llm, config, seed=args.seed))
    for i, (turn, answer) in enumerate(zip(task.turns, answers, strict=True)):
        print(f"[turn {i}] {turn[0]['content'] if turn else ''}\n  -> {answer or '(no final answer)'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
