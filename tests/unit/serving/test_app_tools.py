"""Tool calls: the model's text becomes OpenAI ``tool_calls`` when tools were offered.

The EchoEngine repeats the last message, so each test writes the exact
model output it wants parsed as the user message.
"""

from __future__ import annotations

import json
import re
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.unit.serving.inprocess_clients import async_client, serving, sync_client

from agentrt.serving.http.toolcalls import ToolCallStream, _calls_in, parse_tool_calls

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}},
            "required": ["city"],
        },
    },
}
TIME = {
    "type": "function",
    "function": {"name": "get_time", "parameters": {"type": "object", "properties": {}}},
}
TAGGED = (
    'Let me check. <tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
)


def ask(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


def test_a_tagged_tool_call_is_parsed_with_the_text_before_it_as_content() -> None:
    with serving() as (app, engine):
        reply = sync_client(app).chat.completions.create(
            model="echo", messages=ask(TAGGED), tools=[WEATHER]
        )
    choice = reply.choices[0]
    assert choice.finish_reason == "tool_calls"
    assert choice.message.content == "Let me check."
    (call,) = choice.message.tool_calls
    assert call.type == "function" and call.id.startswith("call_")
    assert call.function.name == "get_weather"
    assert json.loads(call.function.arguments) == {"city": "Paris"}
    assert engine.requests[-1].tools == [WEATHER]  # the tools reach the chat template


def test_bare_json_and_several_calls_are_parsed() -> None:
    bare = '{"name": "get_weather", "arguments": {"city": "Rome"}}'
    many = '<tool_call>[{"name": "get_time", "arguments": {}}, {"name": "get_weather", "parameters": {"city": "Oslo"}}]</tool_call>'
    with serving() as (app, _):
        client = sync_client(app)
        one = client.chat.completions.create(
            model="echo", messages=ask(bare), tools=[WEATHER, TIME]
        )
        two = client.chat.completions.create(
            model="echo", messages=ask(many), tools=[WEATHER, TIME]
        )
    assert one.choices[0].message.content is None
    assert [c.function.name for c in one.choices[0].message.tool_calls] == ["get_weather"]
    assert [c.function.name for c in two.choices[0].message.tool_calls] == [
        "get_time",
        "get_weather",
    ]
    assert json.loads(two.choices[0].message.tool_calls[1].function.arguments) == {"city": "Oslo"}
    assert len({c.id for c in two.choices[0].message.tool_calls}) == 2


@pytest.mark.parametrize(
    ("tools", "tool_choice", "text"),
    [
        (None, None, TAGGED),  # no tools offered: text stays text
        ([WEATHER], "none", TAGGED),  # tool_choice none: never a call
        ([TIME], None, TAGGED),  # a call to a tool that was not offered
        ([WEATHER], None, '<tool_call>{"name": "get_weather", "arguments": {broken</tool_call>'),
        ([WEATHER], None, '{"just": "some json"}'),
    ],
)
def test_text_that_is_not_a_valid_offered_call_stays_content(
    tools: list[dict[str, object]] | None, tool_choice: str | None, text: str
) -> None:
    extra = {"tools": tools} if tools else {}
    if tool_choice:
        extra["tool_choice"] = tool_choice
    with serving() as (app, _):
        reply = sync_client(app).chat.completions.create(model="echo", messages=ask(text), **extra)
    assert reply.choices[0].message.tool_calls is None
    assert reply.choices[0].message.content == text
    assert reply.choices[0].finish_reason == "stop"


def test_a_named_tool_choice_offers_only_that_tool() -> None:
    with serving() as (app, engine):
        reply = sync_client(app).chat.completions.create(
            model="echo",
            messages=ask(TAGGED),
            tools=[WEATHER, TIME],
            tool_choice={"type": "function", "function": {"name": "get_weather"}},
        )
    assert engine.requests[-1].tools == [WEATHER]
    assert reply.choices[0].message.tool_calls[0].function.name == "get_weather"


async def test_streamed_tool_calls_arrive_as_deltas_after_the_streamed_text() -> None:
    with serving() as (app, _):
        stream = await async_client(app).chat.completions.create(
            model="echo", messages=ask(TAGGED), tools=[WEATHER], stream=True
        )
        chunks = [c async for c in stream]
    content = "".join(c.choices[0].delta.content or "" for c in chunks)
    deltas = [tc for c in chunks for tc in (c.choices[0].delta.tool_calls or [])]
    assert content.strip() == "Let me check."
    assert "<tool_call>" not in content
    assert len(deltas) == 1
    assert deltas[0].function.name == "get_weather" and json.loads(
        deltas[0].function.arguments
    ) == {"city": "Paris"}
    assert chunks[-1].choices[0].finish_reason == "tool_calls"


def test_the_openai_client_round_trip_with_a_tool_result() -> None:
    with serving() as (app, _):
        client = sync_client(app)
        first = client.chat.completions.create(model="echo", messages=ask(TAGGED), tools=[WEATHER])
        call = first.choices[0].message.tool_calls[0]
        history = [
            *ask(TAGGED),
            first.choices[0].message.model_dump(exclude_none=True),
            {"role": "tool", "tool_call_id": call.id, "content": "Sunny, 21C"},
        ]
        second = client.chat.completions.create(model="echo", messages=history, tools=[WEATHER])
    assert second.choices[0].message.content == "Sunny, 21C"


def test_the_stream_parser_passes_ordinary_text_through_at_once() -> None:
    stream = ToolCallStream({"get_weather"})
    assert stream.feed("Hello") == "Hello"
    assert stream.feed(" wor") == " wor"
    assert stream.feed("ld <tool") == "ld "  # "<tool" may start a call: held back
    assert stream.feed("box>") == "<toolbox>"  # it did not
    assert stream.finish() == ("", [])


def test_the_stream_parser_and_the_whole_text_parser_agree() -> None:
    names = {"get_weather"}
    stream = ToolCallStream(names)
    sent = "".join(stream.feed(piece) for piece in TAGGED.split(" "))
    tail, calls = stream.finish()
    content, expected = parse_tool_calls(TAGGED.replace(" ", ""), names)
    assert (sent + tail).strip() == (content or "")
    assert [(c.function.name, c.function.arguments) for c in calls] == [
        (c.function.name, c.function.arguments) for c in expected
    ]


# The parser before it was made linear, kept as the reference it must agree with on short texts.
_REFERENCE_TAGGED = re.compile(r"<tool_call>\s*(.*?)\s*(?:</tool_call>|$)", re.DOTALL)
_REFERENCE_FENCE = re.compile(r"^```(?:json)?\s*(.*?)\s*```$", re.DOTALL)


def reference_parse(text: str, names: set[str]) -> tuple[str | None, list[tuple[str, str]]]:
    def calls_of(document: str) -> list[tuple[str, str]] | None:
        calls = _calls_in(document, names)  # the JSON side, unchanged
        return None if calls is None else [(c.function.name, c.function.arguments) for c in calls]

    if "<tool_call>" in text:
        found: list[tuple[str, str]] = []
        for block in _REFERENCE_TAGGED.findall(text):
            parsed = calls_of(block)
            if parsed is None:
                return text, []
            found += parsed
        if not found:
            return text, []
        return (_REFERENCE_TAGGED.sub("", text).strip() or None), found
    stripped = text.strip()
    fenced = _REFERENCE_FENCE.match(stripped)
    parsed = calls_of(fenced.group(1) if fenced else stripped)
    return (None, parsed) if parsed else (text, [])


CALL = '{"name": "get_weather", "arguments": {"city": "Oslo"}}'
PIECES = ["<tool_call>", "</tool_call>", "```", "json", CALL, "[", "]", " ", "\n", "hi", "x"]


@given(st.lists(st.sampled_from(PIECES), max_size=8))
@settings(max_examples=300, deadline=None)
def test_the_linear_parser_agrees_with_the_regex_it_replaced(pieces: list[str]) -> None:
    text = "".join(pieces)
    names = {"get_weather"}
    content, calls = parse_tool_calls(text, names)
    assert (content, [(c.function.name, c.function.arguments) for c in calls]) == reference_parse(
        text, names
    )


@pytest.mark.parametrize(
    "text",
    [
        "<tool_call>x" + " " * 40_000 + "x",
        "```json" + " " * 40_000 + "x",
        "<tool_call>" + "<tool_call> " * 20_000,
    ],
)
def test_parsing_takes_linear_time_on_long_blank_runs(text: str) -> None:
    started = time.perf_counter()
    assert parse_tool_calls(text, {"get_weather"}) == (text, [])
    stream = ToolCallStream({"get_weather"})
    sent = "".join(stream.feed(text[i : i + 4]) for i in range(0, len(text), 4))
    assert sent + stream.finish()[0] == text
    # The regexes this replaced took over 20 s on each of these (quadratic); linear is milliseconds.
    assert time.perf_counter() - started < 2.0
