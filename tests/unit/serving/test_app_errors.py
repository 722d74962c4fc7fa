"""Bad input and overload get the right status and an OpenAI error body; nothing leaks, nothing hangs."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
from tests.unit.serving.inprocess_clients import raw_client, serving, sync_client

from agentrt.protocol.engine import EngineUnavailable, GenerationRequest, TokenEvent
from agentrt.testing.echo import EchoEngine

USER = [{"role": "user", "content": "hello world"}]


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


@pytest.mark.parametrize(
    ("body", "param", "says"),
    [
        (
            {"model": "echo", "messages": USER, "temperature": "hot"},
            "temperature",
            "Expected `float | null`",
        ),
        ({"model": "echo", "messages": "hello"}, "messages", "Expected `array`"),
        (
            {"model": "echo", "messages": [{"role": "wizard", "content": "x"}]},
            "messages",
            "Invalid enum value",
        ),
        ({"messages": USER}, "model", "missing required field `model`"),
        ({"model": "echo", "messages": []}, "messages", "must not be empty"),
        (
            {"model": "echo", "messages": USER, "temperature": 3},
            "temperature",
            "temperature must be in",
        ),
        ({"model": "echo", "messages": USER, "top_p": 0}, "top_p", "top_p must be in"),
        ({"model": "echo", "messages": USER, "n": 0}, "n", "n must be between"),
        (
            {"model": "echo", "messages": USER, "max_tokens": 0},
            "max_tokens",
            "max_tokens must be between 1",
        ),
        ({"model": "echo", "messages": USER, "top_logprobs": 3}, "top_logprobs", "needs logprobs"),
        (
            {"model": "echo", "messages": USER, "tool_choice": "required"},
            "tool_choice",
            "needs tools",
        ),
        ({"model": "echo", "messages": USER, "stop": [""]}, "stop", "must not be empty"),
        (
            {"model": "echo", "messages": USER, "logit_bias": {"5": 101}},
            "logit_bias",
            "logit_bias values must be in [-100, 100]",
        ),
        (
            {"model": "echo", "messages": USER, "logit_bias": {"five": 1}},
            "logit_bias",
            "Expected `int`",
        ),
    ],
)
def test_bad_bodies_get_a_400_naming_the_parameter(
    body: dict[str, Any], param: str | None, says: str
) -> None:
    with serving() as (app, engine):
        response = raw_client(app).post("/v1/chat/completions", json=body)
    assert response.status_code == 400
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    assert says in error["message"]
    assert engine.requests == []


def test_malformed_json_and_an_empty_body_get_a_400() -> None:
    with serving() as (app, _):
        http = raw_client(app)
        broken = http.post(
            "/v1/chat/completions",
            content=b'{"model": "echo", "messages": [',
            headers={"content-type": "application/json"},
        )
        empty = http.post("/v1/completions", content=b"")
    assert broken.status_code == 400 and error_of(broken)["code"] == "invalid_json"
    assert empty.status_code == 400 and "empty" in error_of(empty)["message"]


def test_unknown_fields_are_tolerated_like_openai_does() -> None:
    with serving() as (app, _):
        response = raw_client(app).post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": USER, "some_future_option": {"x": 1}},
        )
    assert response.status_code == 200


def test_an_unknown_model_is_a_404_that_lists_the_served_models() -> None:
    with serving() as (app, _), pytest.raises(openai.NotFoundError) as info:
        sync_client(app).chat.completions.create(model="gpt-9", messages=USER)
    assert info.value.code == "model_not_found"
    assert "echo" in info.value.message


def test_a_prompt_longer_than_the_context_is_a_400_that_says_so() -> None:
    long_text = "word " * 100
    with serving(EchoEngine(max_model_len=50)) as (app, engine):
        client = sync_client(app)
        with pytest.raises(openai.BadRequestError) as info:
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": long_text}]
            )
        with pytest.raises(openai.BadRequestError) as streamed:
            client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": long_text}], stream=True
            )
    for error in (info.value, streamed.value):
        assert error.code == "context_length_exceeded"
        assert "maximum context length is 50 tokens" in error.message
    assert engine.stats().kv_blocks_used == 0


def test_max_tokens_over_the_server_limit_is_a_400() -> None:
    with serving(max_tokens_limit=100) as (app, _), pytest.raises(openai.BadRequestError) as info:
        sync_client(app).chat.completions.create(model="echo", messages=USER, max_tokens=101)
    assert info.value.param == "max_tokens"
    assert "between 1 and 100" in info.value.message


def test_a_body_over_the_size_limit_is_a_413() -> None:
    with serving(max_body_bytes=1000) as (app, engine):
        response = raw_client(app).post(
            "/v1/chat/completions",
            json={"model": "echo", "messages": [{"role": "user", "content": "x" * 2000}]},
        )
    assert response.status_code == 413
    assert error_of(response)["code"] == "request_too_large"
    assert response.headers["connection"] == "close"  # the rest of the body is never read
    assert engine.requests == []


def test_a_streamed_body_over_the_size_limit_is_a_413_that_closes_the_connection() -> None:
    def body() -> Iterator[bytes]:  # no content-length: the server finds out while reading
        for _ in range(100):
            yield b"x" * 100

    with serving(max_body_bytes=1000) as (app, engine):
        response = raw_client(app).post(
            "/v1/completions", content=body(), headers={"content-type": "application/json"}
        )
    assert response.status_code == 413
    assert response.headers["connection"] == "close"
    assert engine.requests == []


def test_unknown_paths_and_methods_answer_in_the_openai_schema() -> None:
    with serving() as (app, _):
        http = raw_client(app)
        missing = http.get("/v1/nothing-here")
        wrong_method = http.get("/v1/chat/completions")
    assert missing.status_code == 404 and error_of(missing)["type"] == "not_found_error"
    assert wrong_method.status_code == 405 and error_of(wrong_method)["message"]


def test_malformed_program_headers_are_a_400() -> None:
    with serving() as (app, _), pytest.raises(openai.BadRequestError) as info:
        sync_client(app).chat.completions.create(
            model="echo", messages=USER, extra_headers={"x-agentrt-program": "not a valid id!"}
        )
    assert info.value.param == "x-agentrt-program"


def test_overload_is_a_429_with_retry_after_not_a_hang() -> None:
    """One slot, no queue: a second request while the first runs is refused at once."""
    engine = EchoEngine(token_delay=0.05)
    with serving(engine, max_concurrent_requests=1, max_queued_requests=0, retry_after=3) as (
        app,
        _,
    ):
        client = sync_client(app)
        first_running = threading.Event()
        done: list[str] = []

        def first() -> None:
            stream = client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": "a b c d e f"}], stream=True
            )
            for chunk in stream:
                first_running.set()
                done.append(chunk.choices[0].delta.content or "")

        worker = threading.Thread(target=first)
        worker.start()
        assert first_running.wait(10)
        response = raw_client(app).post(
            "/v1/chat/completions", json={"model": "echo", "messages": USER}
        )
        worker.join(10)
    assert response.status_code == 429
    assert response.headers["retry-after"] == "3"
    assert error_of(response)["type"] == "rate_limit_error"
    assert "".join(done) == "a b c d e f"  # the running request was not disturbed


def test_a_queued_request_gets_a_slot_when_one_frees() -> None:
    engine = EchoEngine(token_delay=0.01)
    with serving(engine, max_concurrent_requests=1, max_queued_requests=4) as (app, _):
        client = sync_client(app)
        results: list[str] = []

        def ask(text: str) -> None:
            reply = client.chat.completions.create(
                model="echo", messages=[{"role": "user", "content": text}]
            )
            results.append(reply.choices[0].message.content or "")

        workers = [threading.Thread(target=ask, args=(f"request {i}",)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(20)
    assert sorted(results) == [f"request {i}" for i in range(4)]


def test_the_engine_refusing_work_is_a_429_too() -> None:
    engine = EchoEngine(token_delay=0.05, max_running=1)
    with serving(engine) as (app, _):
        client = sync_client(app)
        stream = client.chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "a b c"}], stream=True
        )
        next(iter(stream))
        response = raw_client(app).post(
            "/v1/chat/completions", json={"model": "echo", "messages": USER}
        )
        stream.close()
    assert response.status_code == 429
    assert int(response.headers["retry-after"]) >= 1


class FailingEngine(EchoEngine):
    """Dies after ``after`` tokens of every call (the engine process went away)."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self.after = after

    async def generate(self, request: GenerationRequest) -> Any:
        count = 0
        async for event in super().generate(request):
            if count == self.after:
                raise EngineUnavailable("engine lost")
            count += 1
            yield event


def test_an_engine_lost_before_the_first_token_is_a_503() -> None:
    with (
        serving(FailingEngine(after=0)) as (app, _),
        pytest.raises(openai.InternalServerError) as info,
    ):
        sync_client(app).chat.completions.create(model="echo", messages=USER)
    assert info.value.status_code == 503
    assert "engine lost" in info.value.message


def test_an_engine_lost_mid_stream_ends_the_stream_with_an_error_event() -> None:
    with serving(FailingEngine(after=1)) as (app, _):
        with raw_client(app).stream(
            "POST", "/v1/chat/completions", json={"model": "echo", "messages": USER, "stream": True}
        ) as response:
            lines = [line for line in response.iter_lines() if line]
        with pytest.raises(openai.APIError) as info:
            list(sync_client(app).chat.completions.create(model="echo", messages=USER, stream=True))
    assert response.status_code == 200
    assert lines[-1] == "data: [DONE]"
    error = json.loads(lines[-2].removeprefix("data: "))["error"]
    assert error["type"] == "service_unavailable" and error["message"] == "engine lost"
    assert "engine lost" in info.value.message


def test_errors_are_counted_in_the_metrics() -> None:
    with serving() as (app, _):
        http = raw_client(app)
        http.post("/v1/chat/completions", json={"model": "nope", "messages": USER})
        text = http.get("/metrics").text
    assert 'agentrt:request_failure_total{status="404"} 1.0' in text


def test_no_error_leaves_kv_blocks_or_live_calls_behind() -> None:
    with serving(EchoEngine(max_model_len=30)) as (app, engine):
        http = raw_client(app)
        for body in (
            {"model": "echo", "messages": USER, "max_tokens": 29},
            {"model": "echo", "messages": [{"role": "user", "content": "w " * 40}]},
            {"model": "echo", "messages": USER, "n": 99},
        ):
            assert http.post("/v1/chat/completions", json=body).status_code == 400
    stats = engine.stats()
    assert stats.running == 0 and stats.kv_blocks_used == 0


def test_the_engine_unavailable_marks_health_as_503() -> None:
    class DeadEngine(EchoEngine):
        def stats(self) -> Any:
            raise EngineUnavailable("all engines down")

    with serving(DeadEngine()) as (app, _):
        response = raw_client(app).get("/health")
    assert response.status_code == 503
    assert error_of(response)["message"] == "all engines down"


def test_a_token_event_stream_without_usage_still_answers() -> None:
    class Terse(EchoEngine):
        async def generate(self, request: GenerationRequest) -> Any:
            yield TokenEvent(
                call_id=request.call_id, text="ok", token_ids=[1], finish_reason="stop"
            )

    with serving(Terse()) as (app, _):
        reply = sync_client(app).chat.completions.create(model="echo", messages=USER)
    assert reply.choices[0].message.content == "ok"
    assert reply.usage.total_tokens == 0


def test_null_means_the_default_for_optional_parameters() -> None:
    nulls = {
        "stream": None,
        "n": None,
        "presence_penalty": None,
        "frequency_penalty": None,
        "logprobs": None,
        "ignore_eos": None,
        "temperature": None,
        "top_p": None,
        "stop": None,
        "max_tokens": None,
        "parallel_tool_calls": None,
        "tools": None,
        "tool_choice": None,
        "stream_options": None,
    }
    with serving() as (app, engine):
        response = raw_client(app).post(
            "/v1/chat/completions", json={"model": "echo", "messages": USER, **nulls}
        )
    assert response.status_code == 200
    assert response.json()["choices"][0]["message"]["content"] == "hello world"
    assert engine.requests[-1].sampling.n == 1


def test_a_request_queued_past_the_queue_timeout_gets_a_429_not_a_hang() -> None:
    engine = EchoEngine(token_delay=0.05)
    with serving(engine, max_concurrent_requests=1, max_queued_requests=1, queue_timeout=0.2) as (
        app,
        _,
    ):
        blocker = sync_client(app).chat.completions.create(
            model="echo", messages=[{"role": "user", "content": "a b c d e f g h i j"}], stream=True
        )
        next(iter(blocker))
        response = raw_client(app).post(
            "/v1/chat/completions", json={"model": "echo", "messages": USER}
        )
        blocker.close()
    assert response.status_code == 429
    assert "no slot freed within 0.2 s" in error_of(response)["message"]
    assert "retry-after" in response.headers
    assert len(engine.requests) == 1
