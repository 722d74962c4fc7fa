"""The logger writes to the current stderr, even after the one it started with was closed."""

from __future__ import annotations

import io
import sys

import pytest

from agentrt.log import configure_logging, get_logger


def test_logging_follows_a_replaced_and_closed_stderr(monkeypatch: pytest.MonkeyPatch) -> None:
    first = io.StringIO()
    monkeypatch.setattr(sys, "stderr", first)
    configure_logging("info", "json")
    log = get_logger("test")
    log.info("before", n=1)
    first.close()
    second = io.StringIO()
    monkeypatch.setattr(sys, "stderr", second)
    log.info("after", n=2)
    assert '"event": "after"' in second.getvalue()
    assert '"n": 2' in second.getvalue()
