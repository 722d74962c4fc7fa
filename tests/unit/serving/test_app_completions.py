"""/v1/completions: text and token prompts, batches of prompts, echo, logprobs, streaming."""

from __future__ import annotations

import pytest
from tests.unit.serving.inprocess_clients import async_client, raw_client, serving, sync_client


def test_a_text_completion_has_the_openai_shape() -> None:
    with serving() as (app, engine):
        reply = sync_client(app).completions.create(
            model="echo", prompt="one two three four", max_tokens=3
        )
    assert reply.object == "text_completion" and reply.id.startswith("cmpl-")
    assert reply.choices[0].text == "one two three"
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 3
    assert engine.requests[0].prompt == "one two three four"


def test_the_default_max_tokens_is_openais_16() -> None:
    with serving() as (app, engine):
        sync_client(app).completions.create(model="echo", prompt="x")
    assert engine.requests[0].sampling.max_tokens == 16


def test_a_batch_of_prompts_runs_as_side_by_side_calls_with_choice_indices() -> None:
    with serving() as (app, engine):
        reply = sync_client(app).completions.create(model="echo", prompt=["a b", "c d"], n=2)
    assert [(c.index, c.text) for c in reply.choices] == [
        (0, "a b"),
        (1, "a b"),
        (2, "c d"),
        (3, "c d"),
    ]
    assert len({r.call_id for r in engine.requests}) == 2
    assert reply.usage.completion_tokens == 8


def test_token_id_prompts_and_echo() -> None:
    with serving() as (app, engine):
        client = sync_client(app)
        ids = client.completions.create(model="echo", prompt=[[1, 2], [3]])
        echoed = client.completions.create(model="echo", prompt="hello there", echo=True)
    assert [r.prompt for r in engine.requests[:2]] == [[1, 2], [3]]
    assert [c.text for c in ids.choices] == [" t1 t2", " t3"]
    assert echoed.choices[0].text == "hello therehello there"


def test_completion_logprobs_in_the_legacy_shape() -> None:
    with serving() as (app, _):
        reply = sync_client(app).completions.create(model="echo", prompt="a bb", logprobs=2)
    lp = reply.choices[0].logprobs
    assert lp.tokens == ["a", " bb"]
    assert lp.text_offset == [0, 1]
    assert all(len(top) == 2 for top in lp.top_logprobs)


async def test_streaming_a_batch_with_usage() -> None:
    with serving() as (app, _):
        stream = await async_client(app).completions.create(
            model="echo", prompt=["a b", "c"], stream=True, stream_options={"include_usage": True}
        )
        chunks = [c async for c in stream]
    texts: dict[int, str] = {}
    for c in chunks:
        for choice in c.choices:
            texts[choice.index] = texts.get(choice.index, "") + choice.text
    assert texts == {0: "a b", 1: "c"}
    assert chunks[-1].usage is not None and chunks[-1].usage.completion_tokens == 3


@pytest.mark.parametrize(
    ("prompt", "says"),
    [
        ([], "must not be empty"),
        ([1, "a"], "mixes"),
        ({"a": 1}, "Expected"),
        (["a", [1]], "mixes"),
        ([[]], "must not be empty"),
    ],
)
def test_bad_prompts_are_400s(prompt: object, says: str) -> None:
    with serving() as (app, _):
        response = raw_client(app).post("/v1/completions", json={"model": "echo", "prompt": prompt})
    assert response.status_code == 400
    assert says in response.json()["error"]["message"]
