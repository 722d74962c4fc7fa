"""Map-reduce: split a question into N sub-questions, answer them at once, combine the answers.

One planning call lists sub-questions; the program fans out one call per
sub-question with ``asyncio.gather`` (N threads of one agentrt program), then
a reduce call writes the final answer from all partial answers. If the model
lists fewer than N usable sub-questions (small models often do), standard
facets of the question fill the gap, so the fan-out is always N wide.

Run it alone::

    python -m agentrt.agents.map_reduce --base-url http://localhost:8000/v1 --fan-out 4
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

import agentrt
from agentrt.agents.llm import LLM
from agentrt.agents.questions import load_questions


@dataclass(frozen=True)
class MapReduceConfig:
    fan_out: int = 4
    plan_tokens: int = 96
    map_tokens: int = 96
    reduce_tokens: int = 128


FACETS = (
    "What background does someone need to answer this: {q}",
    "What are the key steps to answer this: {q}",
    "What could go wrong or be misunderstood in this: {q}",
    "Give a concrete example relevant to this: {q}",
    "What is a short, direct answer to this: {q}",
    "What related questions should be considered for this: {q}",
)

_LIST_ITEM = re.compile(r"^\s*(?:\d+[.)]|[-*•])\s*(.+?)\s*$")


def parse_subquestions(text: str, question: str, count: int) -> list[str]:
    """Up to ``count`` list items from the plan, padded with facets of ``question`` to exactly ``count``."""
    items = [m.group(1) for line in text.splitlines() if (m := _LIST_ITEM.match(line)) and len(m.group(1)) > 8]
    items = list(dict.fromkeys(items))[:count]
    facets = (f.format(q=question) for f in FACETS * (count // len(FACETS) + 1))
    while len(items) < count:
        items.append(next(facets))
    return items


@agentrt.program
async def map_reduce(question: str, llm: LLM, config: MapReduceConfig = MapReduceConfig()) -> str:
    """Answer ``question`` through ``config.fan_out`` parallel sub-answers."""
    plan = await llm.achat(
        [{"role": "system", "content": f"Break the question into {config.fan_out} sub-questions, one per numbered line."},
         {"role": "user", "content": question}],
        max_tokens=config.plan_tokens,
    )
    subquestions = parse_subquestions(plan.text, question, config.fan_out)
    partials = await asyncio.gather(
        *(llm.achat([{"role": "user", "content": sub}], max_tokens=config.map_tokens) for sub in subquestions)
    )
    notes = "\n\n".join(f"Q: {sub}\nA: {p.text.strip()}" for sub, p in zip(subquestions, partials, strict=True))
    final = await llm.achat(
        [{"role": "system", "content": "Combine the notes into one answer to the question."},
         {"role": "user", "content": f"Question: {question}\n\nNotes:\n{notes}"}],
        max_tokens=config.reduce_tokens,
    )
    return final.text.strip()


def load_tasks(count: int, seed: int) -> list[str]:
    return load_questions(count, seed + 2)


def main(argv: list[str] | None = None) -> int:
    from agentrt.agents.runner import agent_arguments, run_agent

    parser = agent_arguments(__doc__ or "")
    parser.add_argument("--question", default=None, help="a question (default: one from ShareGPT)")
    parser.add_argument("--fan-out", type=int, default=MapReduceConfig.fan_out)
    args = parser.parse_args(argv)
    question = args.question or load_tasks(1, args.seed)[0]
    answer = run_agent(args, lambda llm: map_reduce(question, llm, MapReduceConfig(fan_out=args.fan_out)))
    print(f"question: {question}\nanswer: {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
