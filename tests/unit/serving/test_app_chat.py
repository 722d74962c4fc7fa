"""/v1/chat/completions through the official openai client, in-process, over the EchoEngine.

The EchoEngine answers with the last message, one word per token, so every
expected output below is exact.
"""

from __future__ import annotations

import json

import pytest
from tests.unit.serving.inprocess_clients import async_client, raw_client, serving, sync_client

USER = [{"role": "user", "content": "the quick brown fox"}]


def test_a_chat_completion_has_the_openai_shape_usage_and_timings() -> None:
    with serving() as (app, _):
        client = sync_client(app)
        raw = client.chat.completions.with_raw_response.create(model="echo", messages=USER)
        reply = raw.parse()
    assert reply.object == "chat.completion"
    assert reply.id.startswith("chatcmpl-")
    assert reply.model == "echo"
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert choice.message.content == "the quick brown fox"
    assert choice.finish_reason == "stop"
    assert reply.usage.completion_tokens == 4
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + 4
    timings = reply.model_extra["agentrt"]
    assert timings["call_id"] == reply.id.removeprefix("chatcmpl-")
    assert timings["e2e_latency"] >= timings["time_to_first_token"] >= 0
    assert "e2e;dur=" in raw.headers["server-timing"]
    assert raw.headers["x-agentrt-call-id"] == timings["call_id"]


def test_x_request_id_is_echoed_or_assigned() -> None:
    with serving() as (app, _):
        http = raw_client(app)
        given = http.get("/v1/models", headers={"x-request-id": "req-123"})
        assigned = http.get("/v1/models")
    assert given.headers["x-request-id"] == "req-123"
    assert len(assigned.headers["x-request-id"]) == 32


def test_streaming_sends_role_then_content_then_finish_then_usage_then_done() -> None:
    with serving() as (app, _):
        http = raw_client(app)
        body = {
            "model": "echo",
            "messages": USER,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            assert response.headers["content-type"].startswith("text/event-stream")
            lines = [line for line in response.iter_lines() if line]
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    chunks = [json.loads(line.removeprefix("data: ")) for line in lines[:-1]]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["id"] for c in chunks}) == 1
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    text = "".join(c["choices"][0]["delta"].get("content", "") for c in chunks if c["choices"])
    assert text == "the quick brown fox"
    finish = [c for c in chunks if c["choices"] and c["choices"][0]["finish_reason"]]
    assert [c["choices"][0]["finish_reason"] for c in finish] == ["stop"]
    assert all(c["usage"] is None for c in chunks[:-1])  # present and null until the last chunk
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["completion_tokens"] == 4


def test_include_usage_null_means_no_usage_chunk() -> None:
    body = {
        "model": "echo",
        "messages": USER,
        "stream": True,
        "stream_options": {"include_usage": None},
    }
    with (
        serving() as (app, _),
        raw_client(app).stream("POST", "/v1/chat/completions", json=body) as response,
    ):
        assert response.status_code == 200
        chunks = [
            json.loads(line[6:])
            for line in response.iter_lines()
            if line and line != "data: [DONE]"
        ]
    assert all(c["choices"] and c.get("usage") is None for c in chunks)


def test_the_openai_client_streams_with_usage() -> None:
    with serving() as (app, _):
        stream = sync_client(app).chat.completions.create(
            model="echo", messages=USER, stream=True, stream_options={"include_usage": True}
        )
        chunks = list(stream)
    assert (
        "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
        == "the quick brown fox"
    )
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 4


async def test_the_async_client_works_plain_and_streaming() -> None:
    with serving() as (app, _):
        client = async_client(app)
        reply = await client.chat.completions.create(model="echo", messages=USER)
        stream = await client.chat.completions.create(model="echo", messages=USER, stream=True)
        pieces = [c.choices[0].delta.content or "" async for c in stream]
    assert reply.choices[0].message.content == "the quick brown fox"
    assert "".join(pieces) == "the quick brown fox"


def test_n_stop_and_max_tokens_are_honoured() -> None:
    with serving() as (app, _):
        client = sync_client(app)
        two = client.chat.completions.create(model="echo", messages=USER, n=2)
        stopped = client.chat.completions.create(model="echo", messages=USER, stop=[" brown"])
        short = client.chat.completions.create(model="echo", messages=USER, max_tokens=2)
        newer = client.chat.completions.create(model="echo", messages=USER, max_completion_tokens=1)
    assert [c.index for c in two.choices] == [0, 1]
    assert [c.message.content for c in two.choices] == ["the quick brown fox"] * 2
    assert stopped.choices[0].message.content == "the quick"
    assert stopped.choices[0].finish_reason == "stop"
    assert short.choices[0].message.content == "the quick"
    assert short.choices[0].finish_reason == "length"
    assert short.usage.completion_tokens == 2
    assert newer.usage.completion_tokens == 1


def test_logprobs_come_back_in_the_openai_shape() -> None:
    with serving() as (app, _):
        reply = sync_client(app).chat.completions.create(
            model="echo", messages=USER, logprobs=True, top_logprobs=2
        )
    entries = reply.choices[0].logprobs.content
    assert [e.token for e in entries] == ["the", " quick", " brown", " fox"]
    assert all(len(e.top_logprobs) == 2 and e.bytes == list(e.token.encode()) for e in entries)


def test_sampling_parameters_and_vllm_extras_reach_the_engine() -> None:
    with serving() as (app, engine):
        sync_client(app).chat.completions.create(
            model="echo",
            messages=USER,
            temperature=0.5,
            top_p=0.9,
            seed=7,
            presence_penalty=0.5,
            frequency_penalty=-0.5,
            logit_bias={"17": -100, "3": 2.5},
            user="someone",
            extra_body={
                "top_k": 20,
                "min_p": 0.05,
                "repetition_penalty": 1.1,
                "ignore_eos": True,
                "stop_token_ids": [5],
                "priority": -3,
            },
        )
    request = engine.requests[-1]
    s = request.sampling
    assert (s.temperature, s.top_p, s.seed, s.top_k, s.min_p) == (0.5, 0.9, 7, 20, 0.05)
    assert (s.presence_penalty, s.frequency_penalty, s.repetition_penalty) == (0.5, -0.5, 1.1)
    assert s.ignore_eos and s.stop_token_ids == [5]
    assert s.logit_bias == {17: -100.0, 3: 2.5}
    assert request.priority == -3


def test_messages_of_every_role_reach_the_chat_template_as_plain_dicts() -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {
            "role": "user",
            "content": [
                {"type": "text", "text": "weather "},
                {"type": "text", "text": "in Paris?"},
            ],
        },
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    with serving() as (app, engine):
        reply = sync_client(app).chat.completions.create(model="echo", messages=messages)
    sent = engine.requests[-1].messages
    assert sent is not None
    assert sent[1] == {"role": "user", "content": "weather in Paris?"}
    assert sent[2]["tool_calls"][0]["function"] == {
        "name": "weather",
        "arguments": {"city": "Paris"},
    }
    assert sent[3] == {"role": "tool", "content": "sunny", "tool_call_id": "call_1"}
    assert reply.choices[0].message.content == "sunny"


@pytest.mark.parametrize("stream", [False, True])
def test_program_headers_tag_the_call_and_the_call_id_is_adopted(stream: bool) -> None:
    headers = {
        "x-agentrt-program": "prog-1",
        "x-agentrt-thread": "t2",
        "x-agentrt-parent-call": "c0",
        "x-agentrt-call": "c1",
    }
    with serving() as (app, engine):
        result = sync_client(app).chat.completions.create(
            model="echo", messages=USER, extra_headers=headers, stream=stream
        )
        if stream:
            chunk_ids = {c.id for c in result}
    request = engine.requests[-1]
    assert request.call_id == "c1"
    assert request.program is not None
    assert (
        request.program.program_id,
        request.program.thread_id,
        request.program.parent_call_id,
    ) == ("prog-1", "t2", "c0")
    assert (chunk_ids if stream else {result.id}) == {"chatcmpl-c1"}


def test_a_bare_session_id_header_names_the_program() -> None:
    with serving() as (app, engine):
        sync_client(app).chat.completions.create(
            model="echo", messages=USER, extra_headers={"x-session-id": "sess-9"}
        )
    assert engine.requests[-1].program is not None
    assert engine.requests[-1].program.program_id == "sess-9"


def test_served_model_name_is_listed_and_accepted() -> None:
    with serving(served_model_name="my-model") as (app, engine):
        client = sync_client(app)
        names = [m.id for m in client.models.list()]
        one = client.models.retrieve("my-model")
        reply = client.chat.completions.create(model="my-model", messages=USER)
    assert set(names) == {"echo", "my-model"}
    assert one.id == "my-model" and one.model_extra["max_model_len"] == engine.max_model_len
    assert reply.model == "my-model"
    assert engine.requests[-1].model == "echo"
