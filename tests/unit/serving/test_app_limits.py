"""Every numeric request field is checked against its bound at the edge: a 400 naming it, the engine never sees it."""

from __future__ import annotations

import threading
from typing import Any

import pytest
from tests.unit.serving.inprocess_clients import raw_client, serving, sync_client

from agentrt.engine.sampling import validate_sampling_params
from agentrt.protocol.engine import InvalidRequest, SamplingParams
from agentrt.protocol.limits import INT32_MAX, INT64_MAX, INT64_MIN, SAMPLING_BOUNDS
from agentrt.testing.echo import EchoEngine

USER = [{"role": "user", "content": "hello world"}]
# Integers msgspec decodes without complaint but no int64 holds, and the extremes of the types.
HUGE_INTS = [2**63, 2**64 - 1, 2**64, 10**30, -(2**63) - 1]
HUGE_FLOATS = [1e308, -1e308]

# (field, value past its bound): each must be refused by every generation endpoint.
PAST_THE_BOUND: list[tuple[str, Any]] = [
    ("top_k", INT32_MAX + 1),
    ("top_k", -2),
    ("seed", INT64_MAX + 1),
    ("seed", INT64_MIN - 1),
    ("max_tokens", 2**63),
    ("n", 2**63),
    ("temperature", 2.0001),
    ("top_p", 1.0001),
    ("min_p", 1.5),
    ("presence_penalty", 2.5),
    ("frequency_penalty", -2.5),
    ("repetition_penalty", 10.5),
    ("priority", INT64_MAX + 1),
    ("priority", INT64_MIN - 1),
    ("stop_token_ids", [INT32_MAX + 1]),
    ("stop_token_ids", [-1]),
    ("logit_bias", {str(2**63): 1.0}),
    ("stop", [f"s{i}" for i in range(17)]),
    ("stop", ["x" * 257]),
    ("stop_token_ids", list(range(257))),
]
PAST_THE_BOUND += [(name, v) for name in ("top_k", "seed", "priority") for v in HUGE_INTS]
PAST_THE_BOUND += [
    (name, v)
    for name in ("temperature", "top_p", "min_p", "presence_penalty", "repetition_penalty")
    for v in HUGE_FLOATS
]


def error_of(response: Any) -> dict[str, Any]:
    body = response.json()
    assert set(body) == {"error"}
    return dict(body["error"])


@pytest.mark.parametrize(("field", "value"), PAST_THE_BOUND)
@pytest.mark.parametrize("path", ["/v1/chat/completions", "/v1/completions", "/v1/responses"])
def test_a_value_past_its_bound_is_a_400_naming_the_field(
    path: str, field: str, value: Any
) -> None:
    body: dict[str, Any] = {"model": "echo", field: value}
    inputs = {"chat/completions": {"messages": USER}, "responses": {"input": "hi"}}
    body.update(next((v for k, v in inputs.items() if path.endswith(k)), {"prompt": "hi"}))
    with serving() as (app, engine):
        response = raw_client(app).post(path, json=body)
    assert response.status_code == 400, response.text
    error = error_of(response)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == field
    assert engine.requests == []


@pytest.mark.parametrize(
    ("path", "extra", "param"),
    [
        ("/v1/chat/completions", {"logprobs": True, "top_logprobs": 2**63}, "top_logprobs"),
        ("/v1/chat/completions", {"max_completion_tokens": 2**64}, "max_tokens"),
        ("/v1/completions", {"logprobs": 2**63}, "logprobs"),
        ("/v1/completions", {"prompt": [1, 2**63]}, "prompt"),
        ("/v1/completions", {"prompt": [[1], [-1]]}, "prompt"),
    ],
)
def test_endpoint_specific_numbers_are_bounded_too(
    path: str, extra: dict[str, Any], param: str
) -> None:
    body: dict[str, Any] = {"model": "echo"}
    body.update({"messages": USER} if path.endswith("chat/completions") else {"prompt": "hi"})
    body.update(extra)
    with serving() as (app, engine):
        response = raw_client(app).post(path, json=body)
    assert response.status_code == 400, response.text
    assert error_of(response)["param"] == param
    assert engine.requests == []


@pytest.mark.parametrize(
    "extra",
    [
        {"top_k": INT32_MAX, "temperature": 2.0, "top_p": 1.0, "min_p": 1.0},
        {"seed": INT64_MAX, "priority": INT64_MIN},
        {"seed": INT64_MIN, "priority": INT64_MAX, "repetition_penalty": 10.0},
        {"top_k": 0, "presence_penalty": -2.0, "frequency_penalty": 2.0},
        {"stop_token_ids": [0, INT32_MAX], "logit_bias": {"0": -100, str(INT32_MAX): 100}},
    ],
)
def test_values_at_their_bounds_are_accepted(extra: dict[str, Any]) -> None:
    with serving() as (app, engine):
        response = raw_client(app).post(
            "/v1/chat/completions", json={"model": "echo", "messages": USER, **extra}
        )
    assert response.status_code == 200, response.text
    assert len(engine.requests) == 1


@pytest.mark.parametrize(
    ("field", "value"),
    [(name, bound.high + 1) for name, bound in SAMPLING_BOUNDS.items()]
    + [(name, bound.low - 1) for name, bound in SAMPLING_BOUNDS.items()]
    + [("top_k", 2**63), ("seed", 2**64), ("top_k", 0)],
)
def test_the_engine_refuses_what_the_edge_refuses(field: str, value: float) -> None:
    extra: dict[str, object] = {"logprobs": True} if field == "top_logprobs" else {}
    params = SamplingParams(**{field: value, **extra})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as err:
        validate_sampling_params(params, vocab_size=64)
    assert err.value.param == field


def test_too_many_prompts_in_one_request_is_a_400_before_any_call_is_made() -> None:
    with serving(max_prompts_per_request=8) as (app, engine):
        too_many = raw_client(app).post(
            "/v1/completions", json={"model": "echo", "prompt": ["a"] * 9, "max_tokens": 1}
        )
        just_enough = raw_client(app).post(
            "/v1/completions", json={"model": "echo", "prompt": ["a"] * 8, "max_tokens": 1}
        )
    assert too_many.status_code == 400, too_many.text
    assert error_of(too_many)["param"] == "prompt"
    assert "at most 8 prompts" in error_of(too_many)["message"]
    assert just_enough.status_code == 200
    assert len(engine.requests) == 8


def test_prompts_times_n_is_bounded() -> None:
    with serving(max_choices_per_request=12) as (app, engine):
        over = raw_client(app).post(
            "/v1/completions", json={"model": "echo", "prompt": ["a", "b", "c"], "n": 5}
        )
        at = raw_client(app).post(
            "/v1/completions", json={"model": "echo", "prompt": ["a", "b", "c"], "n": 4}
        )
    assert over.status_code == 400, over.text
    assert error_of(over)["param"] == "n"
    assert at.status_code == 200
    assert len(at.json()["choices"]) == 12
    assert len(engine.requests) == 3


def test_each_prompt_of_a_request_holds_its_own_server_slot() -> None:
    """Three slots, no queue: a three-prompt request running leaves no room for another call."""
    engine = EchoEngine(token_delay=0.05)
    with serving(engine, max_concurrent_requests=3, max_queued_requests=0) as (app, _):
        client = sync_client(app)
        running = threading.Event()
        texts: list[str] = []

        def batch() -> None:
            stream = client.completions.create(
                model="echo", prompt=["a b c d e f"] * 3, max_tokens=6, stream=True
            )
            for chunk in stream:
                running.set()
                texts.append(chunk.choices[0].text)

        worker = threading.Thread(target=batch)
        worker.start()
        assert running.wait(10)
        refused = raw_client(app).post("/v1/completions", json={"model": "echo", "prompt": "x"})
        worker.join(10)
        after = raw_client(app).post("/v1/completions", json={"model": "echo", "prompt": "x"})
    assert refused.status_code == 429, refused.text
    assert after.status_code == 200
    assert "".join(texts).count("f") == 3  # the batch itself was not disturbed
