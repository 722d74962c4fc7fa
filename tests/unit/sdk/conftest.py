"""Fixtures of the SDK tests: a recording server, and SDK state reset between tests."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.unit.sdk.recording import RecordingServer

from agentrt.sdk import lifecycle
from agentrt.sdk.instrument import instrument


@pytest.fixture
def server() -> RecordingServer:
    return RecordingServer()


@pytest.fixture(autouse=True)
def _fresh_sdk_state() -> Iterator[None]:
    """Each test starts with threads (not openai) instrumented and no server remembered as
    unsupported."""
    instrument(threads=True, openai=False)
    lifecycle.forget_unsupported_servers()
    yield
    instrument(threads=True, openai=False)
    lifecycle.forget_unsupported_servers()
