"""Agents read whatever a model writes: actions, scores and lists are parsed robustly."""

from __future__ import annotations

import json

from agentrt.agents.chat import ChatConfig, replay_plan
from agentrt.agents.map_reduce import parse_subquestions
from agentrt.agents.questions import load_questions, parse_score
from agentrt.agents.react import describe, parse_actions
from agentrt.datasets import Conversation, Turn


def test_react_reads_action_lines_bare_json_and_string_arguments() -> None:
    text = 'Thought: list it.\nAction: {"name": "ls", "arguments": {"a": true}}'
    [call] = parse_actions(text)
    assert call.name == "ls" and json.loads(call.arguments) == {"a": True}
    [call] = parse_actions('{"name": "cd", "arguments": "{\\"folder\\": \\"x\\"}"}')
    assert call.name == "cd" and json.loads(call.arguments) == {"folder": "x"}
    two = parse_actions('Action: {"name": "a", "arguments": {}} then {"name": "b", "parameters": {"x": 1}}')
    assert [c.name for c in two] == ["a", "b"] and json.loads(two[1].arguments) == {"x": 1}


def test_react_ignores_text_without_a_well_formed_call() -> None:
    for text in ["", "I cannot do that.", "Action: {name: ls}", '{"arguments": {}}', "{{{", '["name"]']:
        assert parse_actions(text) == []


def test_react_lists_tools_compactly() -> None:
    doc = {"name": "mv", "description": "File API. Tool description: Move a file.",
           "parameters": {"properties": {"source": {"type": "string"}, "dest": {"type": "string"}},
                          "required": ["source"]}}
    assert describe(doc) == "- mv(source: string, dest?: string): Move a file."


def test_scores_are_read_from_any_reply() -> None:
    assert parse_score("8") == 0.8
    assert parse_score("I would say 7/10.") == 0.7
    assert parse_score("10") == 1.0
    assert parse_score("no idea") == 0.5
    assert parse_score("Score: 42") == 0.5  # out of range: not a grade
    assert parse_score("3.5 out of 10") == 0.35


def test_map_reduce_always_fans_out_to_the_requested_width() -> None:
    plan = "1. What is X?\n2) How does X work?\n- short\n* Why does X matter today?\n2. What is X?"
    subs = parse_subquestions(plan, "Explain X", 5)
    assert subs[:3] == ["What is X?", "How does X work?", "Why does X matter today?"]
    assert len(subs) == 5 and all("Explain X" in s for s in subs[3:])
    assert len(parse_subquestions("", "Q", 9)) == 9
    assert parse_subquestions(plan, "Q", 1) == ["What is X?"]


def test_chat_replays_the_real_history_and_reply_lengths() -> None:
    conversation = Conversation("c", [
        Turn("user", "hello there"),
        Turn("assistant", "Hi! " * 50),
        Turn("user", "x" * 5000),
        Turn("assistant", "ok"),
        Turn("assistant", "a second assistant message in a row makes no call"),
        Turn("user", "bye"),
        Turn("assistant", "bye"),
    ])
    plan = replay_plan(conversation, ChatConfig(max_turns=2, max_reply_tokens=30, max_message_chars=1000))
    assert len(plan) == 2
    (first, first_max), (second, second_max) = plan
    assert first == [{"role": "user", "content": "hello there"}] and first_max == 30
    assert [m["role"] for m in second] == ["user", "assistant", "user"]
    assert second[1]["content"] == "Hi! " * 50  # the recorded reply, not the model's
    assert len(second[2]["content"]) == 1000 and 1 <= second_max <= 5


def test_questions_are_real_seeded_and_bounded() -> None:
    a, b = load_questions(5, seed=3), load_questions(5, seed=3)
    assert a == b and load_questions(5, seed=4) != a
    assert all(40 <= len(q) <= 400 for q in a)
