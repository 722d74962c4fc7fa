"""What a hostile client can do to connections of a real ``agentrt serve`` (uvicorn on loopback).

Raw sockets, since a well-behaved HTTP client cannot send what these tests
send: a body far past the limit, headers a byte at a time, nothing at all.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from tests.e2e.live_server import ECHO, agentrt_serve

LIMIT = 64 * 1024
DEADLINE = 1.0  # header_timeout and body_timeout of the server under test


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    folder = tmp_path_factory.mktemp("connections")
    config = folder / "agentrt.toml"
    config.write_text(
        f"[server]\nmax_body_bytes = {LIMIT}\n"
        f"header_timeout = {DEADLINE}\nbody_timeout = {DEADLINE}\n"
    )
    with agentrt_serve(
        "--engine-factory", ECHO, "--config", str(config), log_path=folder / "serve.log"
    ) as url:
        host, port = url.removeprefix("http://").split(":")
        yield host, int(port)


def read_until_closed(sock: socket.socket, within: float) -> tuple[bytes, bool]:
    """What the server sends, and whether it closed the connection, within ``within`` seconds."""
    deadline = time.monotonic() + within
    received = b""
    while time.monotonic() < deadline:
        sock.settimeout(max(0.01, deadline - time.monotonic()))
        try:
            data = sock.recv(65536)
        except TimeoutError:
            break
        except ConnectionResetError:
            return received, True
        if not data:
            return received, True
        received += data
    return received, False


def test_a_body_declared_past_the_limit_is_answered_413_and_the_connection_closed(
    server: tuple[str, int],
) -> None:
    with socket.create_connection(server) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"Content-Length: 10737418240\r\n\r\n" + b"x" * LIMIT
        )
        received, closed = read_until_closed(sock, within=10)
        assert received.startswith(b"HTTP/1.1 413 ")
        assert b"connection: close" in received.lower()
        assert closed  # kept open, the server would read and discard the 10 GiB
        sent = 0
        with pytest.raises(OSError):  # the server is gone: sending fails
            for _ in range(1000):
                sent += sock.send(b"x" * 65536)
                time.sleep(0.001)
        assert sent < 64 * 2**20


def test_a_connection_that_never_sends_a_byte_is_closed(server: tuple[str, int]) -> None:
    with socket.create_connection(server) as sock:
        started = time.monotonic()
        received, closed = read_until_closed(sock, within=DEADLINE + 5)
    assert closed and received == b""
    assert time.monotonic() - started < DEADLINE + 4


def test_headers_sent_a_byte_at_a_time_do_not_keep_a_connection_open(
    server: tuple[str, int],
) -> None:
    head = b"GET /health HTTP/1.1\r\nHost: x\r\n" + b"x-slow: " + b"a" * 200
    with socket.create_connection(server) as sock:
        started = time.monotonic()
        with pytest.raises(OSError):  # the server closes the connection mid-head
            for byte in head:
                sock.send(bytes([byte]))
                time.sleep(0.05)  # 10 s in all, far past the deadline
        assert time.monotonic() - started < DEADLINE + 4


def test_a_body_that_trickles_in_is_a_408_that_closes_the_connection(
    server: tuple[str, int],
) -> None:
    with socket.create_connection(server) as sock:
        sock.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: x\r\ncontent-type: application/json\r\n"
            b"Content-Length: 1000\r\n\r\n{"
        )
        received = b""
        closed = False
        started = time.monotonic()
        while not closed and time.monotonic() - started < DEADLINE + 5:
            try:
                sock.send(b" ")
            except OSError:
                break
            chunk, closed = read_until_closed(sock, within=0.1)
            received += chunk
        received += read_until_closed(sock, within=1)[0]
    assert received.startswith(b"HTTP/1.1 408 ")
    assert b"request_timeout" in received


def test_a_kept_alive_connection_serves_requests_past_the_head_deadline(
    server: tuple[str, int],
) -> None:
    """The head deadline is per request; the wait between requests is timeout_keep_alive's (5 s)."""
    with socket.create_connection(server) as sock:
        for _ in range(3):
            sock.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\n\r\n")
            received, closed = read_until_closed(sock, within=0.5)
            assert received.startswith(b"HTTP/1.1 200 ") and not closed
            time.sleep(DEADLINE * 1.5)
