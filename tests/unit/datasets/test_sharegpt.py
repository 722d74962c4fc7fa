"""ShareGPT reader, on the real packaged file (first records only)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from agentrt.datasets import TokenCounter, iter_conversations, load_conversation_tokens
from agentrt.datasets.sharegpt import tokenize_conversations


def test_reads_real_conversations_with_normalised_roles() -> None:
    conversations = list(iter_conversations(limit=20))
    assert len(conversations) == 20
    for c in conversations:
        assert c.id
        assert {t.role for t in c.turns} <= {"user", "assistant", "system"}
        assert any(t.role == "assistant" for t in c.turns)
        assert all(isinstance(t.text, str) for t in c.turns)
    first = conversations[0]
    assert first.id == "QWJhYvA_0"
    assert first.turns[0].text.startswith("Summarize the main ideas of Jeff Walker")
    assert first.as_messages()[0] == {"role": "user", "content": first.turns[0].text}


def test_truncated_last_record_is_dropped(tmp_path: Path) -> None:
    whole = {
        "id": "a",
        "conversations": [{"from": "human", "value": "hi"}, {"from": "gpt", "value": "hello"}],
    }
    text = "[\n" + json.dumps(whole) + ",\n" + json.dumps(whole)[:25]
    path = tmp_path / "cut.json"
    path.write_text(text)
    assert [c.id for c in iter_conversations(path)] == ["a"]


def test_conversations_without_assistant_turns_are_skipped(tmp_path: Path) -> None:
    records = [
        {"id": "empty", "conversations": []},
        {"id": "only-user", "conversations": [{"from": "human", "value": "anyone?"}]},
        {
            "id": "ok",
            "conversations": [{"from": "human", "value": "q"}, {"from": "chatgpt", "value": "a"}],
        },
    ]
    path = tmp_path / "data.json"
    path.write_text(json.dumps(records))
    out = list(iter_conversations(path))
    assert [c.id for c in out] == ["ok"]
    assert out[0].turns[1].role == "assistant"


def test_token_table_counts_each_turn_and_is_cached(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTRT_CACHE_DIR", str(tmp_path))
    table = load_conversation_tokens(limit=5)
    assert len(table) == 5
    assert all(len(c.roles) == len(c.tokens) and all(n >= 0 for n in c.tokens) for c in table)
    assert list(tmp_path.glob("sharegpt-tokens-*-5.msgpack"))
    assert load_conversation_tokens(limit=5) == table


def test_token_counts_follow_the_counter() -> None:
    conversations = list(iter_conversations(limit=3))
    approx = TokenCounter("approx", None)
    table = tokenize_conversations(conversations, approx)
    for c, t in zip(conversations, table, strict=True):
        assert t.tokens == [-(-len(turn.text.encode()) // 4) for turn in c.turns]
        assert t.assistant_turns == sum(1 for turn in c.turns if turn.role == "assistant")
