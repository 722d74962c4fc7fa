"""``agentrt serve`` hands its connection limits to uvicorn; the defaults fit the process's file limit."""

from __future__ import annotations

import resource

import pytest
import uvicorn
from uvicorn.protocols.http.h11_impl import H11Protocol

from agentrt.serving.config import ServerConfig
from agentrt.serving.http.connections import uvicorn_options


def test_the_limits_reach_uvicorn() -> None:
    config = ServerConfig(
        timeout_keep_alive=7,
        limit_concurrency=300,
        h11_max_incomplete_event_size=8192,
        backlog=99,
        header_timeout=3,
    )
    loaded = uvicorn.Config(lambda *a: None, **uvicorn_options(config))
    loaded.load()
    assert issubclass(loaded.http_protocol_class, H11Protocol)
    assert (loaded.timeout_keep_alive, loaded.limit_concurrency) == (7, 300)
    assert (loaded.h11_max_incomplete_event_size, loaded.backlog) == (8192, 99)


def test_by_default_connections_leave_room_in_the_file_descriptor_limit() -> None:
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = uvicorn_options(ServerConfig())["limit_concurrency"]
    assert limit >= 64
    if soft != resource.RLIM_INFINITY:
        assert limit < soft


@pytest.mark.parametrize(
    "bad",
    [
        {"header_timeout": 0},
        {"body_timeout": -1},
        {"timeout_keep_alive": 0},
        {"limit_concurrency": 0},
        {"h11_max_incomplete_event_size": 10},
    ],
)
def test_nonsense_limits_are_refused(bad: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        ServerConfig(**bad)  # type: ignore[arg-type]
