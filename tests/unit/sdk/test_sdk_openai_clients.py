"""agentrt.OpenAI / AsyncOpenAI: the official clients, with each request carrying its program."""

from __future__ import annotations

import httpx
import httpx2
import openai
import pytest
from tests.unit.sdk.recording import BASE_URL, RecordingServer, aask, ask

import agentrt
from agentrt.protocol import headers as h


def test_the_clients_are_the_official_classes() -> None:
    assert issubclass(agentrt.OpenAI, openai.OpenAI)
    assert issubclass(agentrt.AsyncOpenAI, openai.AsyncOpenAI)


def test_outside_a_program_requests_are_exactly_those_of_openai(server: RecordingServer) -> None:
    transport = httpx.MockTransport(server.handler(httpx))
    plain = openai.OpenAI(
        base_url=BASE_URL, api_key="sk-test", http_client=httpx.Client(transport=transport)
    )
    ours = server.sync_client()
    ask(plain, "same")
    ask(ours, "same")
    first, second = server.seen
    assert first.headers == second.headers == {}
    assert first.body == second.body
    assert server.program_requests() == []


@pytest.mark.parametrize("flavour", [httpx, httpx2], ids=["httpx", "httpx2"])
def test_sync_calls_in_a_program_carry_program_thread_parent_and_call(
    server: RecordingServer, flavour: object
) -> None:
    module = flavour
    client = agentrt.OpenAI(
        base_url=BASE_URL,
        api_key="sk-test",
        http_client=module.Client(transport=module.MockTransport(server.handler(module))),  # type: ignore[attr-defined]
    )
    with agentrt.program("solver") as ctx:
        assert ask(client, "one") == "ok:one"
        ask(client, "two")
        after = agentrt.current_program()
    one, two = server.calls()
    assert one.program == two.program == ctx.program_id
    assert one.headers[h.SESSION] == ctx.program_id
    assert one.thread == two.thread == "0"
    assert one.parent is None
    assert two.parent == one.call
    assert one.call != two.call
    assert one.headers[h.PROGRAM_NAME] == "solver"
    assert after is not None and after.parent_call_id == two.call


async def test_async_calls_in_a_program_chain_their_call_ids(server: RecordingServer) -> None:
    client = server.async_client()

    @agentrt.program
    async def agent() -> str:
        await aask(client, "a")
        return await aask(client, "b")

    assert await agent() == "ok:b"
    a, b = server.calls()
    assert a.program == b.program is not None
    assert (a.thread, b.thread) == ("0", "0")
    assert b.parent == a.call
    assert a.headers[h.PROGRAM_NAME].endswith("agent")


def test_sync_streaming_carries_the_headers_and_streams_every_chunk(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx:
        stream = client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "s"}], stream=True
        )
        words = [c.choices[0].delta.content for c in stream if c.choices[0].delta.content]
    assert words == ["a", "b", "c"]
    (call,) = server.calls()
    assert call.program == ctx.program_id and call.call is not None
    assert call.body["stream"] is True


async def test_async_streaming_carries_the_headers(server: RecordingServer) -> None:
    client = server.async_client()
    async with agentrt.program() as ctx:
        stream = await client.chat.completions.create(
            model="test-model", messages=[{"role": "user", "content": "s"}], stream=True
        )
        words = [c.choices[0].delta.content async for c in stream if c.choices[0].delta.content]
    assert words == ["a", "b", "c"]
    (call,) = server.calls()
    assert call.program == ctx.program_id


def test_streaming_helper_and_raw_responses_go_through_the_same_path(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx:
        raw = client.chat.completions.with_raw_response.create(
            model="test-model", messages=[{"role": "user", "content": "r"}]
        )
        assert raw.parse().choices[0].message.content == "ok:r"
        with client.chat.completions.with_streaming_response.create(
            model="test-model", messages=[{"role": "user", "content": "q"}]
        ) as response:
            assert response.status_code == 200
    first, second = server.calls()
    assert first.program == second.program == ctx.program_id
    assert second.parent == first.call


def test_legacy_completions_are_llm_calls_too(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.program():
        client.completions.create(model="test-model", prompt="x")
    (call,) = server.calls()
    assert call.path == "/v1/completions" and call.call is not None


def test_other_requests_carry_the_program_but_are_not_calls(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx:
        ask(client)
        models = client.models.list()
        ask(client)
    assert [m.id for m in models] == ["test-model"]
    listing = next(s for s in server.seen if s.path.endswith("/models"))
    assert listing.program == ctx.program_id
    assert h.CALL not in listing.headers
    first, second = server.calls()
    assert second.parent == first.call  # the listing did not advance the chain
    assert listing.parent == first.call


def test_headers_are_computed_at_send_time_not_at_construction(server: RecordingServer) -> None:
    client = server.sync_client()  # built outside any program
    with agentrt.program() as one:
        ask(client)
    with agentrt.program() as two:
        ask(client)
    first, second = server.calls()
    assert (first.program, second.program) == (one.program_id, two.program_id)
    assert one.program_id != two.program_id


def test_explicit_headers_from_the_caller_win(server: RecordingServer) -> None:
    client = server.sync_client()
    with agentrt.program():
        client.chat.completions.create(
            model="test-model",
            messages=[{"role": "user", "content": "x"}],
            extra_headers={h.SESSION: "my-session"},
        )
    (call,) = server.calls()
    assert call.headers[h.SESSION] == "my-session"
    assert call.program != "my-session"


def test_a_retried_call_keeps_its_call_id(server: RecordingServer) -> None:
    server.fail_next = [503]
    client = server.sync_client(max_retries=1)
    client = client.with_options(timeout=5.0)
    with agentrt.program():
        ask(client)
        ask(client)
    failed, retried, nxt = server.calls()
    assert failed.call == retried.call
    assert failed.parent == retried.parent is None
    assert nxt.parent == retried.call


def test_copies_made_with_with_options_stay_agentrt_clients(server: RecordingServer) -> None:
    client = server.sync_client().with_options(max_retries=0)
    assert isinstance(client, agentrt.OpenAI)
    with agentrt.program() as ctx:
        ask(client)
    assert server.calls()[0].program == ctx.program_id


def test_app_and_http_client_together_are_refused(server: RecordingServer) -> None:
    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never called")

    with pytest.raises(TypeError, match="either app= or http_client="):
        agentrt.OpenAI(app=app, http_client=httpx.Client(), api_key="k")


def test_the_request_options_copy_is_a_model_copy_with_the_headers() -> None:
    """The per-call copy of the options equals openai's own copy plus the assignment, and
    leaves the caller's options as they were."""
    from openai._compat import model_copy
    from openai._models import FinalRequestOptions

    from agentrt.sdk.openai_clients import with_headers

    options = FinalRequestOptions.construct(
        method="post", url="/chat/completions", json_data={"model": "m"}, max_retries=2
    )
    reference = model_copy(options)
    reference.headers = {"x-agentrt-call": "c1"}
    ours = with_headers(options, {"x-agentrt-call": "c1"})
    assert type(ours) is FinalRequestOptions
    assert ours.__dict__ == reference.__dict__
    assert ours.model_fields_set == reference.model_fields_set
    assert ours.__pydantic_extra__ == reference.__pydantic_extra__
    assert ours.__pydantic_private__ == reference.__pydantic_private__
    ours.json_data = {"model": "other"}
    assert options.json_data == {"model": "m"} and "headers" not in options.model_fields_set
