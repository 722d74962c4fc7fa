"""``agentrt.instrument()`` on the openai library, and ``agentrt.instrument_client()``.

Clients here are plain ``openai.OpenAI`` / ``AsyncOpenAI`` and httpx clients,
built with no agentrt code, as an agent framework builds them.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import subprocess
import sys
import threading
import time
from typing import Any, ClassVar

import httpx
import openai
import pytest
from tests.unit.sdk.recording import BASE_URL, RecordingServer

import agentrt
from agentrt.protocol import headers as h
from agentrt.sdk import openai_clients


@pytest.fixture
def instrumented() -> Any:
    agentrt.instrument()
    yield
    agentrt.instrument(threads=True, openai=False)


def plain(server: RecordingServer, **kwargs: Any) -> openai.OpenAI:
    http = httpx.Client(transport=httpx.MockTransport(server.handler(httpx)))
    return openai.OpenAI(
        base_url=BASE_URL, api_key="sk-test", max_retries=0, http_client=http, **kwargs
    )


def plain_async(server: RecordingServer) -> openai.AsyncOpenAI:
    http = httpx.AsyncClient(transport=httpx.MockTransport(server.async_handler(httpx)))
    return openai.AsyncOpenAI(base_url=BASE_URL, api_key="sk-test", max_retries=0, http_client=http)


def chat(client: openai.OpenAI, text: str, **kwargs: Any) -> Any:
    return client.chat.completions.create(
        model="m", messages=[{"role": "user", "content": text}], **kwargs
    )


def assert_one_chain(calls: list[Any], program_id: str) -> None:
    assert {c.program for c in calls} == {program_id}
    assert [c.parent for c in calls] == [None] + [c.call for c in calls[:-1]]
    assert len({c.call for c in calls}) == len(calls)


@pytest.mark.usefixtures("instrumented")
def test_every_openai_client_carries_the_program_chat_completions_and_streams(
    server: RecordingServer,
) -> None:
    client = plain(server)  # built before or after instrument(): both carry programs
    with agentrt.program("framework") as ctx:
        chat(client, "one")
        streamed = "".join(
            chunk.choices[0].delta.content or ""
            for chunk in chat(client, "two", stream=True)
            if chunk.choices
        )
        client.completions.create(model="m", prompt="three")
        chat(client.with_options(timeout=5.0), "four")
    assert streamed == "abc"
    calls = server.calls()
    assert [c.prompt for c in calls] == ["one", "two", "three", "four"]
    assert_one_chain(calls, ctx.program_id)
    assert calls[0].headers[h.PROGRAM_NAME] == "framework"
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]


@pytest.mark.usefixtures("instrumented")
async def test_async_clients_and_their_copies_carry_the_program(server: RecordingServer) -> None:
    client = plain_async(server)
    async with agentrt.program() as ctx:
        await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "a"}])
        stream = await client.with_options(max_retries=0).chat.completions.create(
            model="m", messages=[{"role": "user", "content": "b"}], stream=True
        )
        async for _ in stream:
            pass
    calls = server.calls()
    assert_one_chain(calls, ctx.program_id)
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]


@pytest.mark.usefixtures("instrumented")
def test_calls_outside_a_program_are_untouched(server: RecordingServer) -> None:
    chat(plain(server), "alone")
    (call,) = server.seen
    assert call.headers == {}


@pytest.mark.usefixtures("instrumented")
def test_agentrt_clients_under_instrumentation_send_each_call_once(
    server: RecordingServer,
) -> None:
    client = server.sync_client()
    with agentrt.program() as ctx:
        chat(client, "x")
        chat(client, "y")
    assert_one_chain(server.calls(), ctx.program_id)
    assert [m for m, _ in server.program_requests()] == ["POST", "DELETE"]


def test_instrumenting_is_idempotent_and_undone_by_uninstrument() -> None:
    agentrt.instrument()
    patched = openai.OpenAI.request
    agentrt.instrument()
    assert openai.OpenAI.request is patched and openai_clients.is_installed()
    agentrt.uninstrument()
    assert "request" not in openai.OpenAI.__dict__
    assert "request" not in openai.AsyncOpenAI.__dict__
    agentrt.uninstrument()
    assert not openai_clients.is_installed()


def test_instrumenting_from_many_threads_at_once_leaves_openai_restorable() -> None:
    def toggle(i: int) -> None:
        for _ in range(50):
            agentrt.instrument(openai=bool(i % 2))

    threads = [threading.Thread(target=toggle, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    agentrt.uninstrument()
    assert "request" not in openai.OpenAI.__dict__
    assert "request" not in openai.AsyncOpenAI.__dict__


def test_opting_out_by_argument(server: RecordingServer) -> None:
    agentrt.instrument(openai=False)
    with agentrt.program():
        chat(plain(server), "x")
    assert server.seen[0].headers == {}


@pytest.mark.parametrize("variable", ["AGENTRT_INSTRUMENT_OPENAI", "AGENTRT_INSTRUMENT"])
def test_opting_out_by_environment_variable(variable: str) -> None:
    # A fresh interpreter: the variable is read when instrument() is called.
    code = (
        "import openai, agentrt; agentrt.instrument(); "
        "assert 'request' not in openai.OpenAI.__dict__; "
        "agentrt.instrument(openai=True); "  # an explicit argument wins over the environment
        "assert 'request' in openai.OpenAI.__dict__"
    )
    env = {"PATH": "", variable: "0", "PYTHONPATH": ":".join(sys.path)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, timeout=120)


def test_instrument_client_alone_covers_one_client_and_its_copies(
    server: RecordingServer,
) -> None:
    client = plain(server)
    other = plain(server)
    assert agentrt.instrument_client(client) is client
    assert agentrt.instrument_client(client) is client  # twice is harmless
    with agentrt.program() as ctx:
        chat(client, "mine")
        chat(client.with_options(timeout=3.0), "copy")
        chat(other, "not instrumented")
    mine, copy, untouched = server.calls()
    assert_one_chain([mine, copy], ctx.program_id)
    assert untouched.headers == {}
    assert "request" not in openai.OpenAI.__dict__  # nothing global was patched


def test_instrument_client_keeps_the_class_of_a_subclass(server: RecordingServer) -> None:
    class Custom(openai.OpenAI):
        pass

    http = httpx.Client(transport=httpx.MockTransport(server.handler(httpx)))
    client = Custom(base_url=BASE_URL, api_key="k", max_retries=0, http_client=http)
    agentrt.instrument_client(client)
    assert isinstance(client, Custom)
    with agentrt.program():
        chat(client, "x")
    assert server.calls()[0].program is not None


def test_instrument_client_on_an_httpx_client(server: RecordingServer) -> None:
    client = agentrt.instrument_client(
        httpx.Client(transport=httpx.MockTransport(server.handler(httpx)))
    )
    agentrt.instrument_client(client)
    assert len(client.event_hooks["request"]) == 1
    body = {"model": "m", "messages": [{"role": "user", "content": "raw"}]}
    with agentrt.program("raw") as ctx:
        client.post(f"{BASE_URL}/chat/completions", json=body)
        client.post(f"{BASE_URL}/chat/completions", json=body)
        client.get("http://tools.test/lookup")
    first, second = server.calls()
    assert_one_chain([first, second], ctx.program_id)
    tool = server.seen[-2]
    assert tool.path == "/lookup" and tool.program == ctx.program_id and tool.call is None
    # Announced through the client itself before the first call, and ended after.
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]
    assert server.seen[0].path == "/v1/programs" and server.seen[0].body["name"] == "raw"


async def test_instrument_client_on_an_async_httpx_client(server: RecordingServer) -> None:
    client = agentrt.instrument_client(
        httpx.AsyncClient(transport=httpx.MockTransport(server.async_handler(httpx)))
    )
    body = {"model": "m", "messages": [{"role": "user", "content": "raw"}]}
    async with agentrt.program() as ctx:
        await client.post(f"{BASE_URL}/chat/completions", json=body)
        await asyncio.sleep(0.05)
        await client.post(f"{BASE_URL}/chat/completions", json=body)
    first, second = server.calls()
    assert_one_chain([first, second], ctx.program_id)
    assert float(second.headers[h.INTERRUPT]) >= 0.05
    assert server.program_requests() == [("POST", ctx.program_id), ("DELETE", ctx.program_id)]


def test_instrument_client_refuses_other_objects() -> None:
    with pytest.raises(TypeError, match=r"openai\.OpenAI / AsyncOpenAI or an httpx"):
        agentrt.instrument_client(object())


@pytest.mark.usefixtures("instrumented")
def test_the_interrupt_is_the_time_between_calls_whatever_ran(server: RecordingServer) -> None:
    client = plain(server)
    with agentrt.program():
        chat(client, "first")
        time.sleep(0.1)  # undecorated tool work
        for _ in chat(client, "streamed", stream=True):
            time.sleep(0.01)  # consuming the stream is part of the call, not an interrupt
        time.sleep(0.05)
        chat(client, "third")
    first, streamed, third = server.calls()
    assert h.INTERRUPT not in first.headers
    assert 0.1 <= float(streamed.headers[h.INTERRUPT]) < 0.2
    assert 0.05 <= float(third.headers[h.INTERRUPT]) < 0.08


@pytest.mark.usefixtures("instrumented")
async def test_steps_in_fresh_tasks_report_the_pause_between_them(
    server: RecordingServer,
) -> None:
    client = plain_async(server)

    async def step(text: str) -> None:
        await client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": text}]
        )

    async with agentrt.program():
        await asyncio.create_task(step("one"))
        await asyncio.sleep(0.1)
        await asyncio.create_task(step("two"))
        await asyncio.gather(step("left"), step("right"))
    one, two, *branches = server.calls()
    assert one.thread == two.thread == "0" and two.parent == one.call
    assert float(two.headers[h.INTERRUPT]) >= 0.1
    # The gather's branches overlap: two threads, both after "two" (parallel to ATLAS).
    assert {b.thread for b in branches} == {"0", "1"}
    assert {b.parent for b in branches} == {two.call}


class _Recorder(http.server.BaseHTTPRequestHandler):
    """A real loopback HTTP server: what a bare event hook's own client has to reach."""

    seen: ClassVar[list[tuple[str, str, dict[str, Any]]]] = []

    def _answer(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        self.seen.append((self.command, self.path, body))
        payload = json.dumps({"id": "x", "object": "program"}).encode()
        self.send_response(200)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_POST = do_DELETE = _answer

    def log_message(self, format: str, *args: Any) -> None:
        pass


@pytest.fixture
def loopback() -> Any:
    _Recorder.seen = []
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Recorder)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/v1"
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize("is_async", [False, True])
def test_a_bare_event_hook_announces_and_ends_programs_by_itself(
    loopback: str, is_async: bool
) -> None:
    body = {"model": "m", "messages": []}

    def sync_run() -> str:
        with (
            httpx.Client(event_hooks={"request": [agentrt.add_program_headers]}) as client,
            agentrt.program("bare") as ctx,
        ):
            client.post(f"{loopback}/chat/completions", json=body)
            client.post(f"{loopback}/chat/completions", json=body)
        return ctx.program_id

    async def async_run() -> str:
        hooks = {"request": [agentrt.add_program_headers_async]}
        async with httpx.AsyncClient(event_hooks=hooks) as client, agentrt.program("bare") as ctx:
            await client.post(f"{loopback}/chat/completions", json=body)
            await client.post(f"{loopback}/chat/completions", json=body)
        return ctx.program_id

    program_id = asyncio.run(async_run()) if is_async else sync_run()
    methods = [(m, p) for m, p, _ in _Recorder.seen]
    assert methods == [
        ("POST", "/v1/programs"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/chat/completions"),
        ("DELETE", f"/v1/programs/{program_id}"),
    ]
    assert _Recorder.seen[0][2]["name"] == "bare"
