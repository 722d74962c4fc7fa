"""GET and DELETE /v1/responses/{id} through the official openai client, in-process, over the EchoEngine."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import openai
import pytest
from tests.unit.serving.inprocess_clients import async_client, raw_client, serving, sync_client

CALL = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
WEATHER = {"type": "function", "name": "get_weather", "parameters": {"type": "object"}}


def error_of(reply: Any) -> dict[str, Any]:
    body: dict[str, Any] = reply.json()
    assert set(body) == {"error"} and set(body["error"]) == {"message", "type", "param", "code"}
    return body["error"]


@pytest.mark.parametrize("stream", [False, True])
def test_a_stored_response_is_retrieved_as_it_was_answered(stream: bool) -> None:
    with serving() as (app, _):
        client = sync_client(app)
        kwargs: dict[str, Any] = {
            "model": "echo",
            "input": "Paris " + CALL,
            "tools": [WEATHER],
            "instructions": "Be brief.",
            "metadata": {"k": "v"},
        }
        if stream:
            answered = list(client.responses.create(stream=True, **kwargs))[-1].response
        else:
            answered = client.responses.create(**kwargs)
        retrieved = client.responses.retrieve(answered.id)
        raw = raw_client(app).get(f"/v1/responses/{answered.id}")
    assert retrieved.model_dump() == answered.model_dump()
    assert retrieved.store is True and retrieved.instructions == "Be brief."
    assert [item.type for item in retrieved.output] == ["message", "function_call"]
    assert retrieved.usage is not None and retrieved.usage.output_tokens > 0
    assert raw.status_code == 200 and raw.headers["content-type"] == "application/json"


def test_a_deleted_response_is_gone_for_retrieval_and_previous_response_id() -> None:
    with serving() as (app, _):
        client = sync_client(app)
        first = client.responses.create(model="echo", input="a")
        kept = client.responses.create(model="echo", input="b", previous_response_id=first.id)
        http = raw_client(app)
        deleted = http.delete(f"/v1/responses/{first.id}")
        client.responses.delete(kept.id)  # the openai client's own call
        again = http.delete(f"/v1/responses/{first.id}")
        retrieved = http.get(f"/v1/responses/{first.id}")
        continued = http.post(
            "/v1/responses",
            json={"model": "echo", "input": "c", "previous_response_id": first.id},
        )
        with pytest.raises(openai.NotFoundError):
            client.responses.retrieve(kept.id)
    assert deleted.status_code == 200
    assert deleted.json() == {"id": first.id, "object": "response.deleted", "deleted": True}
    for reply in (again, retrieved):
        assert reply.status_code == 404
        error = error_of(reply)
        assert error["code"] == "response_not_found" and error["param"] == "response_id"
        assert error["type"] == "not_found_error"
    assert continued.status_code == 400
    assert error_of(continued)["code"] == "previous_response_not_found"


def test_unknown_unstored_and_evicted_responses_are_404s() -> None:
    with serving(responses_store_size=1) as (app, _):
        client = sync_client(app)
        evicted = client.responses.create(model="echo", input="a")
        client.responses.create(model="echo", input="b")
        unstored = client.responses.create(model="echo", input="c", store=False)
        http = raw_client(app)
        replies = [
            http.request(method, f"/v1/responses/{rid}")
            for rid in (evicted.id, unstored.id, "resp_nope", "x" * 300)
            for method in ("GET", "DELETE")
        ]
    for reply in replies:
        assert reply.status_code == 404, reply.text
        assert error_of(reply)["code"] == "response_not_found"


def test_one_tenant_cannot_read_or_delete_anothers_responses(tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text('[keys]\n"sk-alpha" = "alpha"\n"sk-beta" = "beta"\n')
    with serving(api_key_file=str(keys)) as (app, _):
        alpha = sync_client(app, api_key="sk-alpha")
        beta = raw_client(app, headers={"authorization": "Bearer sk-beta"})
        mine = alpha.responses.create(model="echo", input="secret")
        read = beta.get(f"/v1/responses/{mine.id}")
        deleted = beta.delete(f"/v1/responses/{mine.id}")
        anonymous = raw_client(app).get(f"/v1/responses/{mine.id}")
        still = alpha.responses.retrieve(mine.id)
    assert read.status_code == 404 and deleted.status_code == 404
    assert error_of(read)["code"] == "response_not_found"
    assert anonymous.status_code == 401
    assert still.output_text == "secret"


def test_a_server_that_stores_nothing_says_so() -> None:
    with serving(responses_store_size=0) as (app, _):
        reply = sync_client(app).responses.create(model="echo", input="a")
        http = raw_client(app)
        answers = [http.get(f"/v1/responses/{reply.id}"), http.delete(f"/v1/responses/{reply.id}")]
    for answer in answers:
        assert answer.status_code == 404
        error = error_of(answer)
        assert error["code"] == "response_store_disabled"
        assert "responses_store_size" in error["message"]


def test_streaming_a_stored_response_again_is_refused() -> None:
    with serving() as (app, _):
        reply = sync_client(app).responses.create(model="echo", input="a")
        http = raw_client(app)
        refused = http.get(f"/v1/responses/{reply.id}", params={"stream": "true"})
        plain = http.get(f"/v1/responses/{reply.id}", params={"stream": "false"})
    assert refused.status_code == 400 and error_of(refused)["param"] == "stream"
    assert plain.status_code == 200 and plain.json()["id"] == reply.id


async def test_the_async_client_retrieves_and_deletes() -> None:
    with serving() as (app, _):
        client = async_client(app)
        answered = await client.responses.create(model="echo", input="one two")
        retrieved = await client.responses.retrieve(answered.id)
        await client.responses.delete(answered.id)
        with pytest.raises(openai.NotFoundError):
            await client.responses.retrieve(answered.id)
    assert retrieved.output_text == "one two"
