"""Monte Carlo tree search over reasoning steps, with parallel rollouts (asyncio tasks).

Each round selects ``parallel`` leaves by UCT (a virtual loss keeps the
concurrent selections apart), and simulates from each at once with
``asyncio.gather``: expand one step, roll the solution out to the end, grade
it. The grades are backed up the tree; after ``simulations`` rollouts the
most visited path is turned into an answer. Every task is a thread of the
same agentrt program.

Run it alone::

    python -m agentrt.agents.mcts --base-url http://localhost:8000/v1
"""

from __future__ import annotations

import asyncio
import math
from dataclasses import dataclass, field

import agentrt
from agentrt.agents.llm import LLM
from agentrt.agents.questions import load_questions, parse_score


@dataclass(frozen=True)
class MctsConfig:
    simulations: int = 8
    parallel: int = 4  # rollouts in flight at once
    branching: int = 2  # children per node before it is descended through
    max_depth: int = 3
    step_tokens: int = 48
    rollout_tokens: int = 64
    grade_tokens: int = 8
    answer_tokens: int = 96
    exploration: float = 1.4
    temperature: float = 0.8


@dataclass
class TreeNode:
    steps: list[str]
    parent: TreeNode | None = None
    children: list[TreeNode] = field(default_factory=list)
    visits: int = 0
    value: float = 0.0
    in_flight: int = 0  # virtual loss: rollouts currently below this node

    def uct(self, exploration: float) -> float:
        n = self.visits + self.in_flight
        if n == 0:
            return math.inf
        parent_n = (self.parent.visits + self.parent.in_flight) if self.parent else n
        return self.value / n + exploration * math.sqrt(math.log(max(parent_n, 1)) / n)


def select(root: TreeNode, config: MctsConfig) -> TreeNode:
    """Descend by UCT to a node that still has room for a child (or sits at the depth limit)."""
    node = root
    while len(node.children) >= config.branching and len(node.steps) < config.max_depth:
        node = max(node.children, key=lambda c: c.uct(config.exploration))
    walk: TreeNode | None = node
    while walk is not None:
        walk.in_flight += 1
        walk = walk.parent
    return node


def backup(node: TreeNode, value: float) -> None:
    walk: TreeNode | None = node
    while walk is not None:
        walk.in_flight = max(0, walk.in_flight - 1)
        walk.visits += 1
        walk.value += value
        walk = walk.parent


def _path(question: str, steps: list[str]) -> str:
    return f"Problem: {question}\n" + "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(steps))


async def simulate(question: str, leaf: TreeNode, llm: LLM, config: MctsConfig, seed: int) -> tuple[TreeNode, float]:
    """Expand ``leaf`` by one sampled step, roll out to an answer, grade it."""
    target = leaf
    if len(leaf.steps) < config.max_depth:
        step = await llm.achat(
            [{"role": "system", "content": "Write only the next step of the solution."},
             {"role": "user", "content": _path(question, leaf.steps) + f"\nStep {len(leaf.steps) + 1}:"}],
            max_tokens=config.step_tokens, temperature=config.temperature, seed=seed,
        )
        target = TreeNode(steps=[*leaf.steps, step.text.strip() or "(empty step)"], parent=leaf)
        target.in_flight = 1  # the rollout now runs below the new child too; backup() releases it
        leaf.children.append(target)
    rollout = await llm.achat(
        [{"role": "system", "content": "Finish the solution briefly and state the answer."},
         {"role": "user", "content": _path(question, target.steps)}],
        max_tokens=config.rollout_tokens, temperature=config.temperature, seed=seed + 1,
    )
    grade = await llm.achat(
        [{"role": "system", "content": "Grade this solution from 0 to 10. Reply with the number only."},
         {"role": "user", "content": _path(question, target.steps) + "\n" + rollout.text}],
        max_tokens=config.grade_tokens, temperature=0.0,
    )
    return target, parse_score(grade.text)


@agentrt.program
async def mcts(question: str, llm: LLM, config: MctsConfig = MctsConfig(), seed: int = 0) -> str:
    """Search with ``config.simulations`` rollouts, ``config.parallel`` at a time; return the answer."""
    root = TreeNode(steps=[])
    done = 0
    while done < config.simulations:
        batch = min(config.parallel, config.simulations - done)
        leaves = [select(root, config) for _ in range(batch)]
        results = await asyncio.gather(
            *(simulate(question, leaf, llm, config, seed * 10_000 + (done + i) * 2) for i, leaf in enumerate(leaves))
        )
        for node, value in results:
            backup(node, value)
        done += batch
    node = root
    while node.children:
        node = max(node.children, key=lambda c: c.visits)
    reply = await llm.achat(
        [{"role": "system", "content": "Answer the problem using the reasoning given."},
         {"role": "user", "content": _path(question, node.steps) + "\nAnswer:"}],
        max_tokens=config.answer_tokens,
    )
    return reply.text.strip()


def load_tasks(count: int, seed: int) -> list[str]:
    return load_questions(count, seed + 1)


def main(argv: list[str] | None = None) -> int:
    from agentrt.agents.runner import agent_arguments, run_agent

    parser = agent_arguments(__doc__ or "")
    parser.add_argument("--question", default=None, help="a question (default: one from ShareGPT)")
    parser.add_argument("--simulations", type=int, default=MctsConfig.simulations)
    parser.add_argument("--parallel", type=int, default=MctsConfig.parallel)
    args = parser.parse_args(argv)
    question = args.question or load_tasks(1, args.seed)[0]
    config = MctsConfig(simulations=args.simulations, parallel=args.parallel)
    answer = run_agent(args, lambda llm: mcts(question, llm, config, seed=args.seed))
    print(f"question: {question}\nanswer: {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
