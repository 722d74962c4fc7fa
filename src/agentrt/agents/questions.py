"""Real questions for the search and fan-out agents: opening user turns of ShareGPT conversations.

The Autellix paper runs LATS on HotpotQA, which no installed package ships;
ShareGPT's opening questions are real user requests of the same kind (a short
prompt that needs reasoning), and they are available offline.
"""

from __future__ import annotations

import random
import re
from functools import lru_cache

from agentrt.datasets import iter_conversations


@lru_cache(maxsize=4)
def _question_pool(pool: int, min_chars: int, max_chars: int) -> tuple[str, ...]:
    questions: list[str] = []
    for conversation in iter_conversations(limit=pool):
        first = next((t.text.strip() for t in conversation.turns if t.role == "user"), "")
        if min_chars <= len(first) <= max_chars and first.isascii():
            questions.append(first)
    return tuple(questions)


def load_questions(count: int, seed: int, *, pool: int = 3000, min_chars: int = 40, max_chars: int = 400) -> list[str]:
    """``count`` questions drawn with ``seed`` from the opening turns of the first ``pool`` conversations."""
    questions = _question_pool(pool, min_chars, max_chars)
    if not questions:
        raise RuntimeError("no ShareGPT opening turn fits the length bounds")
    rng = random.Random(seed)
    return [rng.choice(questions) for _ in range(count)]


_NUMBER = re.compile(r"(?<![\d.])(10|[0-9](?:\.\d+)?)(?:\s*/\s*10)?(?![\d.])")


def parse_score(text: str, default: float = 5.0) -> float:
    """The first score from 0 to 10 in a model's reply, on a 0..1 scale; ``default`` when there is none."""
    match = _NUMBER.search(text)
    value = float(match.group(1)) if match else default
    return min(10.0, max(0.0, value)) / 10.0
