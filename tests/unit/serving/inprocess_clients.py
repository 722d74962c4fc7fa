"""Helpers for the app tests: an app over an ``EchoEngine``, reached in-process by the official clients."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import openai

from agentrt.serving.config import ServerConfig
from agentrt.serving.http.app import create_app
from agentrt.serving.inprocess import AppRunner, AsyncASGITransport, SyncASGITransport, http
from agentrt.testing.echo import EchoEngine

BASE_URL = "http://agentrt.test/v1"


def sync_client(app: Any, api_key: str = "none", **kwargs: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=BASE_URL,
        api_key=api_key,
        max_retries=0,
        http_client=http.Client(transport=SyncASGITransport(app)),
        **kwargs,
    )


def async_client(app: Any, api_key: str = "none", **kwargs: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=BASE_URL,
        api_key=api_key,
        max_retries=0,
        http_client=http.AsyncClient(transport=AsyncASGITransport(app)),
        **kwargs,
    )


def raw_client(app: Any, headers: dict[str, str] | None = None) -> Any:
    """A plain httpx(2) client on the app, for requests the openai client would refuse to send."""
    return http.Client(
        transport=SyncASGITransport(app), base_url="http://agentrt.test", headers=headers or {}
    )


@contextmanager
def serving(engine: EchoEngine | None = None, **config: Any) -> Iterator[tuple[Any, EchoEngine]]:
    """An app over ``engine`` (a fresh EchoEngine by default), shut down afterwards."""
    engine = engine or EchoEngine()
    app = create_app(engine, ServerConfig(log_requests=False, **config))
    try:
        yield app, engine
    finally:
        AppRunner.for_app(app).close()
