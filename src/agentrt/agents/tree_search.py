"""LATS-style tree search: expand several branches in parallel threads, score them, backtrack.

Each iteration picks the most promising open node of the tree (best first,
so a dead end sends the search back to a sibling or an ancestor's sibling:
backtracking), and expands it with ``width`` candidate next steps generated
in parallel threads of a ``ThreadPoolExecutor``. Each thread proposes a step
(sampled, seeded) and then asks the model to grade it (a self-evaluation
call, as LATS does). The search stops when a step is graded as solving the
question or the iteration budget is spent, and a last call writes the answer
from the best path. The threads are threads of one agentrt program: ATLAS
sees their critical path.

Run it alone::

    python -m agentrt.agents.tree_search --base-url http://localhost:8000/v1
"""

from __future__ import annotations

import random
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import partial

import agentrt
from agentrt.agents.llm import LLM
from agentrt.agents.questions import load_questions, parse_score


@dataclass(frozen=True)
class TreeSearchConfig:
    width: int = 3  # branches per expansion, one thread each
    iterations: int = 3  # expansions before answering (their mean when ``iterations_shape`` is set)
    max_depth: int = 3
    step_tokens: int = 64
    grade_tokens: int = 8
    answer_tokens: int = 96
    temperature: float = 0.8
    solved: float = 0.9  # a grade at or above this ends the search
    # A gamma shape: each search draws its own budget from its seed, around ``iterations``
    # (the simulator's LATS draws its iterations with shape 2), so a few run far longer
    # than the typical one. None: every search runs ``iterations``.
    iterations_shape: float | None = None

    def budget(self, seed: int) -> int:
        """The expansions a search with this seed runs at most."""
        if self.iterations_shape is None:
            return self.iterations
        shape = self.iterations_shape
        return max(1, round(random.Random(seed).gammavariate(shape, self.iterations / shape)))


@dataclass
class Node:
    steps: list[str]
    score: float = 0.0
    children: list[Node] = field(default_factory=list)

    @property
    def depth(self) -> int:
        return len(self.steps)


def _propose(question: str, node: Node, llm: LLM, config: TreeSearchConfig, seed: int) -> Node:
    """One thread of an expansion: propose the next reasoning step, then grade it."""
    path = "\n".join(f"Step {i + 1}: {s}" for i, s in enumerate(node.steps))
    reply = llm.chat(
        [
            {"role": "system", "content": "Solve the problem step by step. Write only the next step."},
            {"role": "user", "content": f"Problem: {question}\n{path}\nStep {node.depth + 1}:"},
        ],
        max_tokens=config.step_tokens,
        temperature=config.temperature,
        seed=seed,
    )
    child = Node(steps=[*node.steps, reply.text.strip() or "(empty step)"])
    grade = llm.chat(
        [
            {"role": "system", "content": "Grade how well the reasoning solves the problem from 0 to 10. Reply with the number only."},
            {"role": "user", "content": f"Problem: {question}\n" + "\n".join(child.steps)},
        ],
        max_tokens=config.grade_tokens,
        temperature=0.0,
    )
    child.score = parse_score(grade.text)
    return child


@agentrt.program
def search(question: str, llm: LLM, config: TreeSearchConfig = TreeSearchConfig(), seed: int = 0) -> str:
    """Search for a line of reasoning that answers ``question`` and return the final answer."""
    root = Node(steps=[])
    frontier = [root]
    best = root
    with ThreadPoolExecutor(max_workers=config.width, thread_name_prefix="tree-search") as pool:
        for iteration in range(config.budget(seed)):
            if not frontier:
                break
            node = max(frontier, key=lambda n: n.score)
            frontier.remove(node)
            seeds = [seed * 1000 + iteration * config.width + i for i in range(config.width)]
            node.children = list(pool.map(partial(_propose, question, node, llm, config), seeds))
            frontier += [c for c in node.children if c.depth < config.max_depth]
            best = max([best, *node.children], key=lambda n: n.score)
            if best.score >= config.solved:
                break
    reply = llm.chat(
        [
            {"role": "system", "content": "Answer the problem using the reasoning given."},
            {"role": "user", "content": f"Problem: {question}\n" + "\n".join(best.steps) + "\nAnswer:"},
        ],
        max_tokens=config.answer_tokens,
    )
    return reply.text.strip()


def load_tasks(count: int, seed: int) -> list[str]:
    return load_questions(count, seed)


def main(argv: list[str] | None = None) -> int:
    from agentrt.agents.runner import agent_arguments, run_agent

    parser = agent_arguments(__doc__ or "")
    parser.add_argument("--question", default=None, help="a question (default: one from ShareGPT)")
    parser.add_argument("--width", type=int, default=TreeSearchConfig.width)
    parser.add_argument("--iterations", type=int, default=TreeSearchConfig.iterations)
    args = parser.parse_args(argv)
    question = args.question or load_tasks(1, args.seed)[0]
    config = TreeSearchConfig(width=args.width, iterations=args.iterations)
    answer = run_agent(args, lambda llm: search(question, llm, config, seed=args.seed))
    print(f"question: {question}\nanswer: {answer}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
