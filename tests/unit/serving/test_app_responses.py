"""/v1/responses through the official openai client, in-process, over the EchoEngine.

The EchoEngine answers with the last message, one word per token, so each
test writes the output it wants as the last input item (a ``<tool_call>`` to
get a function call back).
"""

from __future__ import annotations

import json
import threading
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.unit.serving.inprocess_clients import async_client, raw_client, serving, sync_client

from agentrt.serving.http.response_store import ResponseStore
from agentrt.testing.echo import EchoEngine

WEATHER = {
    "type": "function",
    "name": "get_weather",
    "description": "Weather in a city",
    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
}
TIME = {"type": "function", "name": "get_time", "parameters": {"type": "object"}}
CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
TEXT_EVENTS = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
]
TEXT_DONE = [
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
]
CALL_EVENTS = [
    "response.output_item.added",
    "response.function_call_arguments.delta",
    "response.function_call_arguments.done",
    "response.output_item.done",
]


def test_a_string_input_gets_a_completed_response_with_usage() -> None:
    with serving() as (app, engine):
        reply = sync_client(app).responses.create(
            model="echo",
            input="one two three",
            instructions="Be brief.",
            max_output_tokens=50,
            temperature=0.5,
            top_p=0.9,
        )
    assert reply.id.startswith("resp_") and reply.object == "response"
    assert reply.status == "completed" and reply.incomplete_details is None
    assert reply.output_text == "one two three"
    (message,) = reply.output
    assert message.type == "message" and message.role == "assistant"
    assert message.id.startswith("msg_") and message.status == "completed"
    assert reply.usage.output_tokens == 3
    assert reply.usage.total_tokens == reply.usage.input_tokens + 3
    assert reply.instructions == "Be brief." and reply.store is True
    request = engine.requests[-1]
    assert request.messages == [
        {"role": "system", "content": "Be brief."},
        {"role": "user", "content": "one two three"},
    ]
    assert request.sampling.max_tokens == 50
    assert (request.sampling.temperature, request.sampling.top_p) == (0.5, 0.9)


def test_items_become_the_chat_messages_the_template_expects() -> None:
    items: list[Any] = [
        {"role": "developer", "content": "Use tools."},
        {
            "type": "message",
            "role": "user",
            "content": [{"type": "input_text", "text": "Weather?"}],
        },
        {
            "type": "message",
            "role": "assistant",
            "content": [{"type": "output_text", "text": "Checking."}],
        },
        {
            "type": "function_call",
            "call_id": "call_1",
            "name": "get_weather",
            "arguments": '{"city": "Oslo"}',
        },
        {"type": "function_call_output", "call_id": "call_1", "output": "rain and wind"},
    ]
    with serving() as (app, engine):
        reply = sync_client(app).responses.create(model="echo", input=items, tools=[WEATHER])
    assert reply.output_text == "rain and wind"
    messages = engine.requests[-1].messages
    assert messages == [
        {"role": "developer", "content": "Use tools."},
        {"role": "user", "content": "Weather?"},
        {
            "role": "assistant",
            "content": "Checking.",
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": {"city": "Oslo"}},
                }
            ],
        },
        {
            "role": "tool",
            "content": "rain and wind",
            "name": "get_weather",
            "tool_call_id": "call_1",
        },
    ]
    assert engine.requests[-1].tools == [
        {
            "type": "function",
            "function": {k: v for k, v in WEATHER.items() if k != "type"},
        }
    ]


def test_a_tool_call_in_the_output_is_a_function_call_item() -> None:
    with serving() as (app, _):
        reply = sync_client(app).responses.create(
            model="echo", input="Let me see. " + CALL, tools=[WEATHER, TIME]
        )
    message, call = reply.output
    assert message.type == "message" and message.content[0].text == "Let me see."
    assert call.type == "function_call" and call.name == "get_weather"
    assert call.call_id.startswith("call_") and call.id.startswith("fc_")
    assert json.loads(call.arguments) == {"city": "Paris"}
    assert reply.status == "completed"


@pytest.mark.parametrize(
    ("tool_choice", "offered", "parsed"),
    [
        ("none", ["get_weather", "get_time"], False),
        ({"type": "function", "name": "get_weather"}, ["get_weather"], True),
        ("required", ["get_weather", "get_time"], True),
    ],
)
def test_tool_choice_decides_what_is_offered_and_parsed(
    tool_choice: Any, offered: list[str], parsed: bool
) -> None:
    with serving() as (app, engine):
        reply = sync_client(app).responses.create(
            model="echo", input=CALL, tools=[WEATHER, TIME], tool_choice=tool_choice
        )
    assert [t["function"]["name"] for t in engine.requests[-1].tools] == offered
    assert [item.type for item in reply.output] == (["function_call"] if parsed else ["message"])


async def test_the_stream_follows_the_responses_event_sequence() -> None:
    with serving() as (app, _):
        client = async_client(app)
        stream = await client.responses.create(model="echo", input="one two three", stream=True)
        events = [event async for event in stream]
        whole = await client.responses.create(model="echo", input="one two three")
    types = [e.type for e in events]
    assert types == [
        *TEXT_EVENTS,
        *["response.output_text.delta"] * 3,
        *TEXT_DONE,
        "response.completed",
    ]
    assert [e.sequence_number for e in events] == list(range(len(events)))
    assert "".join(e.delta for e in events if e.type == "response.output_text.delta") == (
        "one two three"
    )
    created, final = events[0].response, events[-1].response
    assert created.status == "in_progress" and created.output == [] and created.usage is None
    assert final.id == created.id and final.status == "completed"
    assert final.output_text == whole.output_text == "one two three"
    assert final.usage.output_tokens == whole.usage.output_tokens == 3
    item_ids = {e.item_id for e in events if hasattr(e, "item_id")}
    assert item_ids == {final.output[0].id}


def test_the_stream_names_its_events_and_sends_no_done_marker() -> None:
    with serving() as (app, _):
        raw = raw_client(app).post(
            "/v1/responses", json={"model": "echo", "input": "a b", "stream": True}
        )
    assert raw.headers["content-type"].startswith("text/event-stream")
    frames = [f for f in raw.text.split("\n\n") if f]
    for frame in frames:
        head, data = frame.split("\n")
        assert head.removeprefix("event: ") == json.loads(data.removeprefix("data: "))["type"]
    assert "[DONE]" not in raw.text


def test_a_streamed_tool_call_arrives_as_a_function_call_item() -> None:
    with serving() as (app, _):
        events = list(
            sync_client(app).responses.create(
                model="echo", input=CALL, tools=[WEATHER], stream=True
            )
        )
    types = [e.type for e in events]
    assert types == ["response.created", "response.in_progress", *CALL_EVENTS, "response.completed"]
    added, delta, done, item_done = events[2:6]
    assert added.item.arguments == "" and added.item.status == "in_progress"
    assert json.loads(delta.delta) == json.loads(done.arguments) == {"city": "Paris"}
    assert item_done.item.call_id == added.item.call_id and done.name == "get_weather"
    (call,) = events[-1].response.output
    assert call.type == "function_call" and call.id == added.item.id


def test_max_output_tokens_leaves_the_response_incomplete() -> None:
    with serving() as (app, _):
        client = sync_client(app)
        reply = client.responses.create(model="echo", input="a b c d e", max_output_tokens=2)
        events = list(
            client.responses.create(
                model="echo", input="a b c d e", max_output_tokens=2, stream=True
            )
        )
    assert reply.status == "incomplete"
    assert reply.incomplete_details.reason == "max_output_tokens"
    assert reply.output_text == "a b" and reply.output[0].status == "incomplete"
    assert events[-1].type == "response.incomplete"
    assert events[-1].response.incomplete_details.reason == "max_output_tokens"


@pytest.mark.parametrize("stream", [False, True])
def test_previous_response_id_continues_the_stored_conversation(stream: bool) -> None:
    def create(client: openai.OpenAI, **kwargs: Any) -> Any:
        if not stream:
            return client.responses.create(model="echo", **kwargs)
        events = list(client.responses.create(model="echo", stream=True, **kwargs))
        return events[-1].response

    with serving() as (app, engine):
        client = sync_client(app)
        first = create(client, input="Paris " + CALL, tools=[WEATHER], instructions="A.")
        call = first.output[-1]
        output = {"type": "function_call_output", "call_id": call.call_id, "output": "sunny"}
        second = create(client, input=[output], previous_response_id=first.id, instructions="B.")
        third = create(client, input="thanks", previous_response_id=second.id)
    assert second.output_text == "sunny" and second.previous_response_id == first.id
    assert third.output_text == "thanks"
    arguments = json.loads(call.arguments)
    said = first.output[0].content[0].text  # the text around the call, as the client got it
    assert said.strip() == "Paris"
    assert engine.requests[-1].messages == [
        {"role": "user", "content": "Paris " + CALL},
        {
            "role": "assistant",
            "content": said,
            "tool_calls": [
                {
                    "id": call.call_id,
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": arguments},
                }
            ],
        },
        {"role": "tool", "content": "sunny", "tool_call_id": call.call_id},
        {"role": "assistant", "content": "sunny"},
        {"role": "user", "content": "thanks"},
    ]  # the instructions of earlier calls are not carried over
    assert engine.requests[-2].messages[0] == {"role": "system", "content": "B."}


def error_of(reply: Any) -> dict[str, Any]:
    body: dict[str, Any] = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


def test_an_unknown_unstored_or_evicted_previous_response_is_a_400() -> None:
    with serving(responses_store_size=2) as (app, _):
        client = sync_client(app)
        kept = [client.responses.create(model="echo", input=f"w{i}") for i in range(3)]
        unstored = client.responses.create(model="echo", input="x", store=False)
        http = raw_client(app)
        answers = {
            reason: http.post(
                "/v1/responses",
                json={"model": "echo", "input": "y", "previous_response_id": rid},
            )
            for reason, rid in [
                ("evicted", kept[0].id),
                ("unstored", unstored.id),
                ("unknown", "resp_nope"),
            ]
        }
        alive = client.responses.create(model="echo", input="z", previous_response_id=kept[2].id)
    assert unstored.store is False
    for reply in answers.values():
        assert reply.status_code == 400, reply.text
        error = error_of(reply)
        assert error["param"] == "previous_response_id"
        assert error["code"] == "previous_response_not_found"
    assert alive.output_text == "z"


def test_a_server_that_stores_nothing_refuses_previous_response_id() -> None:
    with serving(responses_store_size=0) as (app, _):
        reply = sync_client(app).responses.create(model="echo", input="a")
        refused = raw_client(app).post(
            "/v1/responses",
            json={"model": "echo", "input": "b", "previous_response_id": reply.id},
        )
    assert reply.store is False
    assert refused.status_code == 400
    assert error_of(refused)["code"] == "response_store_disabled"


def test_stored_responses_belong_to_their_tenant(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys]\n"sk-alpha" = "alpha"\n"sk-beta" = "beta"\n')
    with serving(api_key_file=str(keys)) as (app, _):
        first = sync_client(app, api_key="sk-alpha").responses.create(model="echo", input="a")
        with pytest.raises(openai.BadRequestError, match="is not stored"):
            sync_client(app, api_key="sk-beta").responses.create(
                model="echo", input="b", previous_response_id=first.id
            )
        with pytest.raises(openai.AuthenticationError):
            sync_client(app, api_key="sk-wrong").responses.create(model="echo", input="c")
        same = sync_client(app, api_key="sk-alpha").responses.create(
            model="echo", input="b", previous_response_id=first.id
        )
    assert same.output_text == "b"


def test_the_store_drops_each_tenants_least_recently_used_response() -> None:
    store = ResponseStore(max_per_tenant=2, max_bytes_per_tenant=1000)
    assert store.put("t", "r1", ({"role": "user", "content": "1"},), b"{}")
    store.put("t", "r2", (), b"{}")
    store.put("u", "r1", (), b'{"id":"u1"}')
    assert store.get("t", "r1") is not None  # r1 is now the most recently used of t
    store.put("t", "r3", (), b"{}")
    assert store.get("t", "r2") is None and store.get("t", "r1") is not None
    assert store.get("u", "r1") == () and len(store) == 3
    assert store.response("u", "r1") == b'{"id":"u1"}' and store.response("t", "r2") is None
    assert store.response("t", "r3") is not None  # a retrieval is a use too: r1 is the oldest
    store.put("t", "r4", (), b"{}")
    assert store.get("t", "r1") is None and store.get("t", "r3") is not None
    assert store.delete("u", "r1") and not store.delete("u", "r1") and not store.delete("v", "r1")
    assert store.get("u", "r1") is None and len(store) == 2


def test_the_store_keeps_each_tenant_within_its_bytes() -> None:
    store = ResponseStore(max_per_tenant=100, max_bytes_per_tenant=150)
    message = {"role": "user", "content": "x" * 30}  # 60 bytes of JSON as a conversation
    assert store.put("t", "r1", (message,), b"")
    assert store.put("t", "r2", (message,), b"")
    assert store.put("t", "r3", (message,), b"")  # 3 x 60 > 150: r1 goes
    assert store.get("t", "r1") is None and store.get("t", "r2") is not None
    assert store.put("t", "r2", (message,), b"")  # stored again: counted once
    assert store.get("t", "r3") is not None
    assert not store.put("t", "big", ({"role": "user", "content": "y" * 200},), b"")
    assert store.get("t", "big") is None and len(store) == 2
    assert not store.put("t", "r4", (), b"z" * 151)  # the response object counts too
    assert store.put("t", "r5", (message,), b"z" * 30)  # 90 bytes: r2 goes, r3 stays
    assert store.get("t", "r2") is None and store.get("t", "r3") is not None
    assert store.delete("t", "r3") and store.put("t", "r6", (message,), b"")  # room again
    assert store.get("t", "r5") is not None and len(store) == 2


def test_a_response_too_large_to_store_says_so() -> None:
    # About 1 kB stored for the small one (its conversation and its response object), about
    # 2.5 kB for the large one.
    with serving(responses_store_bytes=1500) as (app, _):
        client = sync_client(app)
        small = client.responses.create(model="echo", input="a b")
        large = client.responses.create(model="echo", input="word " * 100)
        events = list(client.responses.create(model="echo", input="word " * 100, stream=True))
    assert small.store is True
    assert large.store is False and events[-1].response.store is False


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({}, "input"),
        ({"input": []}, "input"),
        ({"input": [{"type": "reasoning", "summary": []}]}, "input"),
        ({"input": [{"role": "user"}]}, "input"),
        ({"input": [{"role": "user", "content": [{"type": "input_image"}]}]}, "input"),
        ({"input": [{"type": "function_call", "name": "f"}]}, "input"),
        ({"input": [{"type": "function_call_output", "call_id": "c"}]}, "input"),
        ({"input": [{"role": "robot", "content": "x"}]}, "input"),
        ({"input": "x", "tools": [{"type": "web_search"}]}, "tools"),
        ({"input": "x", "tools": [{"type": "function"}]}, "tools"),
        ({"input": "x", "tools": [WEATHER, WEATHER]}, "tools"),
        ({"input": "x", "tool_choice": "auto"}, "tool_choice"),
        ({"input": "x", "tools": [WEATHER], "tool_choice": {"type": "function", "name": "f"}}, "tool_choice"),
        ({"input": "x", "max_output_tokens": 0}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 10**9}, "max_output_tokens"),
        ({"input": "x", "max_output_tokens": 2**64}, "max_output_tokens"),
        ({"input": "x", "max_tokens": 5}, "max_tokens"),
        ({"input": "x", "temperature": 5}, "temperature"),
        ({"input": "x", "n": 2}, "n"),
        ({"input": "x", "top_logprobs": 3}, "top_logprobs"),
        ({"input": "x", "conversation": "conv_1"}, "conversation"),
        ({"input": 7}, "input"),
    ],
)  # fmt: skip
def test_malformed_bodies_get_the_openai_error_schema(body: dict[str, Any], param: str) -> None:
    with serving() as (app, engine):
        reply = raw_client(app).post("/v1/responses", json={"model": "echo", **body})
    assert reply.status_code == 400, reply.text
    assert error_of(reply)["param"] == param
    assert engine.requests == []


def test_an_unknown_model_and_bad_json_are_answered_like_the_other_endpoints() -> None:
    with serving() as (app, _):
        http = raw_client(app)
        unknown = http.post("/v1/responses", json={"model": "nope", "input": "x"})
        broken = http.post(
            "/v1/responses", content=b"{", headers={"content-type": "application/json"}
        )
    assert unknown.status_code == 404 and error_of(unknown)["code"] == "model_not_found"
    assert broken.status_code == 400 and error_of(broken)["code"] == "invalid_json"


def test_a_call_joins_its_program_and_the_metrics() -> None:
    with serving(EchoEngine()) as (app, _):
        client = sync_client(app)
        headers = {"x-agentrt-program": "p1", "x-agentrt-thread": "main", "x-agentrt-call": "c1"}
        reply = client.responses.create(model="echo", input="a b c", extra_headers=headers)
        http = raw_client(app)
        program = http.get("/v1/programs/p1").json()
        metrics = http.get("/metrics").text
    assert reply.id == "resp_c1"
    assert reply.model_extra["agentrt"]["program_id"] == "p1"
    assert program["num_calls"] == 1
    assert "agentrt:generation_tokens_total 3.0" in metrics


async def test_an_error_after_the_stream_opened_is_an_error_event() -> None:
    class Failing(EchoEngine):
        async def _choice(self, *args: Any, **kwargs: Any) -> Any:
            async for event in super()._choice(*args, **kwargs):
                yield event
                raise RuntimeError("the model broke")

    with serving(Failing()) as (app, _):
        raw = raw_client(app).post(
            "/v1/responses", json={"model": "echo", "input": "a b c", "stream": True}
        )
        stream = await async_client(app).responses.create(model="echo", input="a b", stream=True)
        with pytest.raises(openai.APIError, match="internal server error"):
            async for _ in stream:
                pass
    last = raw.text.strip().split("\n\n")[-1]
    head, data = last.split("\n")
    event = json.loads(data.removeprefix("data: "))
    assert head == "event: error" and event["type"] == "error"
    assert event["message"] == "internal server error" and event["sequence_number"] > 0


def test_a_full_server_answers_429_and_an_oversized_body_413() -> None:
    engine = EchoEngine(token_delay=0.05)
    with serving(engine, max_concurrent_requests=1, max_queued_requests=0, max_body_bytes=1024) as (
        app,
        _,
    ):
        running = threading.Event()
        deltas: list[str] = []

        def stream() -> None:
            for event in sync_client(app).responses.create(
                model="echo", input="a b c d e f", stream=True
            ):
                if event.type == "response.output_text.delta":
                    running.set()
                    deltas.append(event.delta)

        worker = threading.Thread(target=stream)
        worker.start()
        assert running.wait(10)
        http = raw_client(app)
        refused = http.post("/v1/responses", json={"model": "echo", "input": "x"})
        worker.join(10)
        large = http.post("/v1/responses", json={"model": "echo", "input": "x" * 2000})
    assert refused.status_code == 429 and refused.headers["retry-after"] == "1"
    assert error_of(refused)["code"] == "server_overloaded"
    assert large.status_code == 413 and error_of(large)["code"] == "request_too_large"
    assert "".join(deltas) == "a b c d e f"


def test_the_clients_stream_helper_rebuilds_the_response_from_the_events() -> None:
    """``responses.stream`` accumulates a snapshot from the events and fails on any out of order."""
    with serving() as (app, _):
        client = sync_client(app)
        with client.responses.stream(model="echo", input="Hi " + CALL, tools=[WEATHER]) as s:
            deltas = [e.delta for e in s if e.type == "response.output_text.delta"]
            final = s.get_final_response()
    message, call = final.output
    assert "".join(deltas) == message.content[0].text
    assert call.type == "function_call" and json.loads(call.arguments) == {"city": "Paris"}
