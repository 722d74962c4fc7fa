"""Program lifecycle: announced once per server on first use, ended on every exit path."""

from __future__ import annotations

import asyncio
import threading

import anyio
import pytest
from structlog.testing import capture_logs
from tests.unit.sdk.recording import RecordingServer, aask, ask

import agentrt
from agentrt.sdk import lifecycle


def test_a_program_is_announced_once_per_server_and_ended_when_it_returns(
    server: RecordingServer,
) -> None:
    client = server.sync_client()

    @agentrt.program("announced", metadata={"workload": "unit"})
    def agent() -> str:
        ask(client)
        ask(client)
        return agentrt.current_program().program_id  # type: ignore[union-attr]

    program_id = agent()
    assert server.program_requests() == [("POST", program_id), ("DELETE", program_id)]
    post = server.seen[0]
    assert post.path == "/v1/programs"
    assert post.body["program_id"] == program_id
    assert post.body["name"] == "announced"
    assert post.body["metadata"] == {"workload": "unit"}
    assert isinstance(post.body["started_at"], float)
    assert server.seen[-1].path == f"/v1/programs/{program_id}"
    # The announcement precedes the program's first call.
    assert [s.method for s in server.seen] == ["POST", "POST", "POST", "DELETE"]


def test_a_program_that_never_calls_the_llm_tells_no_server(server: RecordingServer) -> None:
    with agentrt.program():
        pass
    assert server.seen == []


def test_each_server_a_program_used_is_told(server: RecordingServer) -> None:
    a = server.sync_client(base_url="http://a.test/v1")
    b = server.sync_client(base_url="http://b.test/v1")
    also_a = server.sync_client(base_url="http://a.test/v1")
    with agentrt.program() as ctx:
        ask(a)
        ask(b)
        ask(also_a)
    hosts = [(s.method, s.path) for s in server.seen if "/programs" in s.path]
    assert sorted(hosts) == sorted(
        [("POST", "/v1/programs"), ("POST", "/v1/programs")]
        + [("DELETE", f"/v1/programs/{ctx.program_id}")] * 2
    )


def test_a_program_is_ended_when_it_raises(server: RecordingServer) -> None:
    client = server.sync_client()

    @agentrt.program
    def failing() -> None:
        ask(client)
        raise KeyError("boom")

    with pytest.raises(KeyError, match="boom"):
        failing()
    methods = [m for m, _ in server.program_requests()]
    assert methods == ["POST", "DELETE"]
    assert agentrt.current_program() is None


async def test_an_async_program_is_ended_when_it_is_cancelled(server: RecordingServer) -> None:
    client = server.async_client()
    called = asyncio.Event()

    @agentrt.program
    async def forever() -> None:
        await aask(client)
        called.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(forever())
    await called.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    (post, delete) = server.program_requests()
    assert post[0] == "POST" and delete == ("DELETE", post[1])


async def test_an_async_program_is_ended_when_an_anyio_scope_cancels_it(
    server: RecordingServer,
) -> None:
    client = server.async_client()

    @agentrt.program
    async def slow() -> None:
        await aask(client)
        await anyio.sleep(3600)

    with anyio.move_on_after(0.05):
        await slow()
    assert [m for m, _ in server.program_requests()] == ["POST", "DELETE"]


async def test_an_async_program_using_a_sync_client_ends_it_without_blocking_the_loop(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    async with agentrt.program() as ctx:
        await asyncio.to_thread(ask, client)
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]


def test_a_sync_program_using_an_async_client_still_ends_it(server: RecordingServer) -> None:
    aclient = server.async_client()
    with agentrt.program() as ctx:
        asyncio.run(aask(aclient))
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]


@pytest.mark.parametrize("status", [404, 405])
def test_a_server_without_the_endpoints_is_never_asked_again(status: int) -> None:
    server = RecordingServer(programs=status)
    client = server.sync_client()
    for _ in range(3):
        with agentrt.program():
            assert ask(client, "still works") == "ok:still works"
    lifecycle_requests = server.program_requests()
    assert [m for m, _ in lifecycle_requests] == ["POST"]  # one refused announcement, no DELETE
    assert len(server.calls()) == 3


def test_a_failing_announcement_is_logged_and_the_program_still_ended() -> None:
    server = RecordingServer(programs=500)
    client = server.sync_client()
    with capture_logs() as logs, agentrt.program() as ctx:
        assert ask(client) == "ok:hi"
    assert [m for m, _ in server.program_requests()] == ["POST", "DELETE"]
    warning = next(e for e in logs if e["event"] == "could not announce program")
    assert warning["log_level"] == "warning"
    assert warning["program_id"] == ctx.program_id
    assert "500" in warning["detail"]


def test_an_unreachable_server_never_raises_into_user_code() -> None:
    import httpx

    def refuse(request: httpx.Request) -> httpx.Response:
        if "/programs" in request.url.path:
            raise httpx.ConnectError("refused", request=request)
        return httpx.Response(
            200,
            json={
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "finish_reason": "stop",
                        "message": {"role": "assistant", "content": "fine"},
                    }
                ],
            },
        )

    client = agentrt.OpenAI(
        base_url="http://down.test/v1",
        api_key="k",
        max_retries=0,
        http_client=httpx.Client(transport=httpx.MockTransport(refuse)),
    )
    with agentrt.program():
        reply = client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}]
        )
    assert reply.choices[0].message.content == "fine"


def test_concurrent_first_calls_announce_exactly_once(server: RecordingServer) -> None:
    client = server.sync_client()
    barrier = threading.Barrier(16)

    def worker() -> None:
        barrier.wait()
        ask(client)

    with agentrt.program() as ctx:
        threads = [threading.Thread(target=worker) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]
    assert len(server.calls()) == 16


def test_forgetting_unsupported_servers_asks_them_again() -> None:
    server = RecordingServer(programs=404)
    client = server.sync_client()
    with agentrt.program():
        ask(client)
    lifecycle.forget_unsupported_servers()
    with agentrt.program():
        ask(client)
    assert [m for m, _ in server.program_requests()] == ["POST", "POST"]
