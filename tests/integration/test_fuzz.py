"""Generated bodies, headers and numbers at the limits of their types, against the app over the real engine.

Whatever a client sends, the answer is never a 5xx, the engine still serves
an ordinary call afterwards, and ``/health`` says so. Bounded in time: a
fixed number of examples, each a small call on the tiny random Llama.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import quote

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.integration.test_adversarial import is_idle
from tests.integration.test_serving_engine import MODEL, NO_EOS, tiny_app
from tests.polling import eventually
from tests.unit.serving.inprocess_clients import async_client, raw_client, serving

from agentrt.engine import AsyncEngine
from agentrt.serving.inprocess import AppRunner

# The edges of every integer type a decoder or a tensor might hold, and a little past them.
EDGE_INTS = [
    0, 1, -1, 2, 255, 256, 1023, 1024,
    2**15 - 1, 2**15, 2**31 - 1, 2**31, -(2**31), -(2**31) - 1,
    2**53, 2**63 - 1, 2**63, -(2**63), -(2**63) - 1, 2**64 - 1, 2**64, 10**30, -(10**30),
]  # fmt: skip
EDGE_FLOATS = [
    0.0, -0.0, 5e-324, -5e-324, 1e-308, 1e-5, 0.5, 1.0, 1.0000001, 2.0, 2.0000001,
    -2.0000001, 10.0, 100.0, 100.5, 1e308, -1e308, 3.4028235e38, 65504.0,
]  # fmt: skip
NUMBER = st.one_of(
    st.sampled_from(EDGE_INTS),
    st.sampled_from(EDGE_FLOATS),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=False, allow_infinity=False),
)
ANY_VALUE = st.one_of(
    st.sampled_from(EDGE_INTS),
    NUMBER,
    st.sampled_from([None, True, False, "", "1", "1e999"]),
)
TOKEN = st.one_of(st.integers(min_value=1, max_value=255), st.sampled_from(EDGE_INTS))
NUMERIC_FIELDS = [
    "max_tokens", "max_completion_tokens", "temperature", "top_p", "n", "seed",
    "presence_penalty", "frequency_penalty", "top_k", "min_p", "repetition_penalty",
    "priority", "logprobs", "top_logprobs",
]  # fmt: skip


def sometimes(draw: st.DrawFn, one_in: int) -> bool:
    return draw(st.integers(min_value=1, max_value=one_in)) == 1


@st.composite
def bodies(draw: st.DrawFn, field: str) -> tuple[str, bytes]:
    """A body whose ``field`` is at an edge; the rest is mostly valid, so the edge is what gets checked.

    Mostly completions with token ids: the tiny model has no tokenizer, so a
    chat body (or stop strings) stops at a 400 before the engine runs.
    """
    chat = sometimes(draw, 5)
    body: dict[str, Any] = {"model": MODEL, "ignore_eos": True, "max_tokens": 3}
    if chat:
        body["messages"] = [{"role": "user", "content": draw(st.text(max_size=20))}]
    else:
        token = TOKEN if sometimes(draw, 10) else st.integers(min_value=1, max_value=255)
        body["prompt"] = draw(st.lists(token, min_size=1, max_size=6))
    body[field] = draw(ANY_VALUE)
    if sometimes(draw, 4):
        body[draw(st.sampled_from(NUMERIC_FIELDS))] = draw(ANY_VALUE)
    if sometimes(draw, 5):
        body["stop_token_ids"] = draw(st.lists(TOKEN, max_size=3))
    if sometimes(draw, 5):
        body["logit_bias"] = {str(draw(st.integers(min_value=0, max_value=255))): draw(NUMBER)}
    if sometimes(draw, 10):
        body["stop"] = draw(st.lists(st.text(max_size=3), max_size=3))
    raw = json.dumps(body).encode()
    if sometimes(draw, 20):  # now and then, bytes that are not JSON
        raw = draw(st.binary(max_size=64))
    return ("/v1/chat/completions" if chat else "/v1/completions"), raw


def rarely(draw: st.DrawFn, one_in: int) -> bool:
    """True about once in ``one_in`` draws (and not on the draws Hypothesis starts from)."""
    return draw(st.integers(min_value=1, max_value=one_in)) == one_in


SAID = st.one_of(
    st.text(max_size=20),
    st.sampled_from(
        ['<tool_call>{"name": "f", "arguments": {"a": 1}}</tool_call>', '{"name": "g"}']
    ),
)
TEXT_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_text", "output_text", "text"]), "text": SAID}
)
BROKEN_PART = st.fixed_dictionaries(
    {"type": st.sampled_from(["input_image", "refusal", "", "input_text"])},
    optional={"text": ANY_VALUE},
)
CALL_ID = st.sampled_from(["c1", "c2"])
GOOD_ITEM = st.one_of(
    st.fixed_dictionaries(
        {
            "role": st.sampled_from(["user", "assistant", "system", "developer"]),
            "content": st.one_of(SAID, st.lists(TEXT_PART, max_size=3)),
        },
        optional={"type": st.just("message")},
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call"),
            "call_id": CALL_ID,
            "name": st.sampled_from(["f", "g"]),
            "arguments": st.sampled_from(["{}", '{"a": 1}', "[", '"x"', ""]),
        }
    ),
    st.fixed_dictionaries(
        {
            "type": st.just("function_call_output"),
            "call_id": CALL_ID,
            "output": st.one_of(SAID, st.lists(TEXT_PART, max_size=2)),
        }
    ),
)
BROKEN_ITEM = st.fixed_dictionaries(
    {},
    optional={
        "type": st.sampled_from(["message", "function_call", "reasoning", "", "item_reference"]),
        "role": st.sampled_from(["user", "tool", "x"]),
        "content": st.one_of(st.lists(BROKEN_PART, max_size=2), ANY_VALUE),
        "call_id": ANY_VALUE,
        "name": ANY_VALUE,
        "arguments": ANY_VALUE,
        "output": ANY_VALUE,
    },
)
GOOD_TOOL = st.fixed_dictionaries(
    {"type": st.just("function"), "name": st.sampled_from(["f", "g"])},
    optional={"parameters": st.just({"type": "object"}), "description": st.text(max_size=8)},
)
BROKEN_TOOL = st.fixed_dictionaries(
    {"type": st.sampled_from(["function", "web_search", "file_search", ""])},
    optional={"name": ANY_VALUE, "parameters": ANY_VALUE, "strict": ANY_VALUE},
)
TOOL_CHOICE = st.one_of(
    st.sampled_from(["none", "auto", "required"]),
    st.fixed_dictionaries({"type": st.just("function"), "name": st.sampled_from(["f", "h"])}),
)


@st.composite
def responses_bodies(draw: st.DrawFn) -> bytes:
    """A ``/v1/responses`` body: mostly well-formed items of every kind, now and then broken ones,
    fields at the edges of their types, or bytes that are not JSON."""
    item = st.one_of(GOOD_ITEM, BROKEN_ITEM) if rarely(draw, 4) else GOOD_ITEM
    tool = st.one_of(GOOD_TOOL, BROKEN_TOOL) if rarely(draw, 4) else GOOD_TOOL
    body: dict[str, Any] = {"model": MODEL, "max_output_tokens": 3}
    body["input"] = draw(st.one_of(SAID, st.lists(item, min_size=1, max_size=4)))
    optional = {
        "instructions": st.text(max_size=10),
        "tools": st.lists(tool, max_size=3),
        "tool_choice": TOOL_CHOICE,
        "previous_response_id": st.sampled_from(["resp_x", ""]),
        "store": st.booleans(),
        "stream": st.booleans(),
        "conversation": st.text(max_size=5),
        "metadata": st.just({"k": "v"}),
        "temperature": st.floats(min_value=0, max_value=2),
        "top_p": st.floats(min_value=0.01, max_value=1),
    }
    for key in draw(st.lists(st.sampled_from(sorted(optional)), max_size=4, unique=True)):
        body[key] = draw(optional[key])
    if rarely(draw, 4):
        body[draw(st.sampled_from([*NUMERIC_FIELDS, "max_output_tokens", "input"]))] = draw(
            ANY_VALUE
        )
    if rarely(draw, 20):
        return draw(st.binary(max_size=64))
    return json.dumps(body).encode()


HEADER_TEXT = st.text(
    st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"), max_size=40
)
HEADERS = st.dictionaries(
    st.sampled_from(
        [
            "x-request-id",
            "x-agentrt-program",
            "x-agentrt-thread",
            "x-agentrt-call",
            "x-agentrt-parent-call",
            "x-agentrt-interrupt",
            "x-agentrt-program-name",
        ]
    ),
    st.one_of(HEADER_TEXT, NUMBER.map(str)),
    max_size=3,
)


@pytest.fixture(scope="module")
def app_and_engine() -> Iterator[tuple[Any, AsyncEngine]]:
    app, engine = tiny_app("plas")
    yield app, engine
    AppRunner.for_app(app).close()


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
def test_every_numeric_field_at_every_edge_is_answered_without_a_5xx(
    app_and_engine: tuple[Any, AsyncEngine], field: str
) -> None:
    app, _ = app_and_engine
    client = raw_client(app)
    for value in [*EDGE_INTS, *EDGE_FLOATS, None, True, "1"]:
        body = {"model": MODEL, "prompt": [1, 2, 3], "max_tokens": 3, "ignore_eos": True}
        reply = client.post("/v1/completions", json={**body, field: value})
        assert reply.status_code < 500, (field, value, reply.text)


@pytest.mark.parametrize("field", NUMERIC_FIELDS)
@settings(
    max_examples=30,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(data=st.data(), headers=HEADERS)
def test_no_generated_request_gets_a_5xx(
    app_and_engine: tuple[Any, AsyncEngine],
    field: str,
    data: st.DataObject,
    headers: dict[str, str],
) -> None:
    app, _ = app_and_engine
    path, raw = data.draw(bodies(field))
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}
    reply = raw_client(app).post(
        path, content=raw, headers={"content-type": "application/json", **encoded}
    )
    assert reply.status_code < 500, reply.text


@settings(
    max_examples=150,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(raw=responses_bodies(), headers=HEADERS)
def test_no_generated_responses_request_gets_a_5xx(
    app_and_engine: tuple[Any, AsyncEngine], raw: bytes, headers: dict[str, str]
) -> None:
    app, _ = app_and_engine
    encoded = {k: v.encode("latin-1") for k, v in headers.items()}
    reply = raw_client(app).post(
        "/v1/responses", content=raw, headers={"content-type": "application/json", **encoded}
    )
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}


@settings(max_examples=150, deadline=None)
@given(raw=responses_bodies())
def test_generated_responses_requests_that_reach_an_engine_are_answered_without_a_5xx(
    raw: bytes,
) -> None:
    """The same bodies on the echo engine (which needs no tokenizer), so the accepted ones run
    through the renderer and the response store; ``model`` names the echo model."""
    with serving() as (app, _):
        reply = raw_client(app).post(
            "/v1/responses",
            content=raw.replace(MODEL.encode(), b"echo"),
            headers={"content-type": "application/json"},
        )
    assert reply.status_code < 500, reply.text
    if reply.status_code == 200 and "text/event-stream" not in reply.headers["content-type"]:
        assert reply.json()["status"] in ("completed", "incomplete")


RESPONSE_ID = st.one_of(
    st.text(max_size=40),
    st.sampled_from(["resp_", "resp_x", ".", "..", "%00", "a/b", "resp_" + "9" * 300]),
)
STREAM_QUERY = st.one_of(
    st.none(), st.sampled_from(["true", "false", "", "1", "0", "yes"]), HEADER_TEXT
)


@settings(max_examples=100, deadline=None)
@given(
    data=st.data(),
    method=st.sampled_from(["GET", "DELETE"]),
    stream=STREAM_QUERY,
    headers=HEADERS,
)
def test_no_generated_stored_response_request_gets_a_5xx(
    data: st.DataObject, method: str, stream: str | None, headers: dict[str, str]
) -> None:
    """GET and DELETE /v1/responses/{id} with generated ids, query strings and headers, on a
    server holding a few stored responses (the ids of some are drawn too): never a 5xx, every
    refusal in the OpenAI error schema, and a retrieval answers the response it stored."""
    with serving(responses_store_size=data.draw(st.sampled_from([0, 2, 1000]))) as (app, _):
        http = raw_client(app)
        stored = [
            http.post("/v1/responses", json={"model": "echo", "input": f"w{i}"}).json()["id"]
            for i in range(3)
        ]
        response_id = data.draw(st.one_of(RESPONSE_ID, st.sampled_from(stored)))
        encoded = {k: v.encode("latin-1") for k, v in headers.items()}
        reply = http.request(
            method,
            "/v1/responses/" + quote(response_id, safe=data.draw(st.sampled_from(["", "/%"]))),
            params=None if stream is None else {"stream": stream},
            headers=encoded,
        )
    assert reply.status_code < 500, reply.text
    if reply.status_code >= 400:
        assert set(reply.json()["error"]) == {"message", "type", "param", "code"}
    elif reply.status_code == 200 and method == "GET":
        assert reply.json()["id"] == response_id and reply.json()["store"] is True
    elif reply.status_code == 200:
        assert reply.json() == {"id": response_id, "object": "response.deleted", "deleted": True}
    else:  # an empty id: Starlette's redirect to /v1/responses
        assert reply.status_code == 307 and not response_id, reply.status_code


async def test_after_the_fuzzing_the_engine_serves_and_health_says_so(
    app_and_engine: tuple[Any, AsyncEngine],
) -> None:
    """Runs after the fuzzing test (same module, same app)."""
    app, engine = app_and_engine
    await eventually(lambda: is_idle(app, engine))
    reply = await async_client(app).completions.create(
        model=MODEL, prompt=[1, 2, 3], max_tokens=4, extra_body=NO_EOS
    )
    assert reply.usage.completion_tokens == 4
    health = raw_client(app).get("/health")
    assert health.status_code == 200
    engine.stats()  # does not raise: the engine has not failed
