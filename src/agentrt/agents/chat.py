"""Multi-turn chat: replay a real ShareGPT conversation, one LLM call per assistant turn.

The conversation's own assistant replies are kept in the history (a replay,
as in the Autellix paper's ShareGPT workload), so every call's prompt is the
real conversation so far whatever the model says, and each call decodes up to
the length of the reply it stands for. The program is sequential: each turn
waits for the previous one, which is what PLAS schedules.

Run it alone::

    python -m agentrt.agents.chat --base-url http://localhost:8000/v1 --conversation 5
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import Any

import agentrt
from agentrt.agents.llm import LLM
from agentrt.datasets import Conversation, iter_conversations, load_token_counter


@dataclass(frozen=True)
class ChatConfig:
    max_turns: int = 6  # assistant turns replayed per conversation
    max_reply_tokens: int = 192  # cap on one call's decode length
    max_message_chars: int = 2000  # long pastes are cut to keep prompts within a small model's context


def replay_plan(conversation: Conversation, config: ChatConfig) -> list[tuple[list[dict[str, Any]], int]]:
    """The calls the replay makes: (prompt messages, max_tokens) for each assistant turn."""
    counter = load_token_counter()
    history: list[dict[str, Any]] = []
    plan: list[tuple[list[dict[str, Any]], int]] = []
    for turn in conversation.turns:
        text = turn.text[: config.max_message_chars]
        if turn.role == "assistant":
            if len(plan) >= config.max_turns:
                break
            if history and history[-1]["role"] == "user":
                plan.append((list(history), max(1, min(config.max_reply_tokens, counter.count(text)))))
        history.append({"role": turn.role, "content": text})
    return plan


@agentrt.program
async def converse(conversation: Conversation, llm: LLM, config: ChatConfig = ChatConfig()) -> list[str]:
    """Replay ``conversation``; return the model's reply to each user turn."""
    replies: list[str] = []
    for messages, max_tokens in replay_plan(conversation, config):
        reply = await llm.achat(messages, max_tokens=max_tokens)
        replies.append(reply.text)
    return replies


def load_tasks(count: int, seed: int, pool: int = 2000) -> list[Conversation]:
    """``count`` conversations drawn with ``seed`` from the first ``pool`` of ShareGPT that have a user turn."""
    conversations = [
        c for c in iter_conversations(limit=pool) if any(t.role == "user" and t.text.strip() for t in c.turns)
    ]
    rng = random.Random(seed)
    return [rng.choice(conversations) for _ in range(count)]


def main(argv: list[str] | None = None) -> int:
    from agentrt.agents.runner import agent_arguments, run_agent

    parser = agent_arguments(__doc__ or "")
    parser.add_argument("--conversation", type=int, default=0, help="index among the sampled conversations")
    parser.add_argument("--max-turns", type=int, default=ChatConfig.max_turns)
    args = parser.parse_args(argv)
    config = ChatConfig(max_turns=args.max_turns)
    conversation = load_tasks(args.conversation + 1, args.seed)[args.conversation]
    replies = run_agent(args, lambda llm: converse(conversation, llm, config))
    for (messages, _), reply in zip(replay_plan(conversation, config), replies, strict=False):
        print(f"user: {messages[-1]['content'][:200]}\nmodel: {reply[:400]}\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
