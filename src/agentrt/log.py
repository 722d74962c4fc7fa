"""The one logger of agentrt: structlog, JSON in production, console in a terminal.

Library code calls :func:`get_logger` and logs events with key/value pairs; it
never prints. The format is chosen once, from ``AGENTRT_LOG_FORMAT``
(``json`` | ``console``) or, when unset, from whether stderr is a terminal.
"""

from __future__ import annotations

import logging
import os
import sys
from typing import Any

import structlog

_configured = False


class _StderrLogger:
    """Writes each rendered event to whatever ``sys.stderr`` is *now*.

    structlog's PrintLogger keeps the stream it was created with; when that
    stream is replaced and closed (pytest's capture, a daemon redirecting its
    output), logging would raise "I/O operation on closed file".
    """

    def msg(self, message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    log = debug = info = warn = warning = error = critical = exception = fatal = msg


def _StderrLoggerFactory() -> Any:
    return lambda *args: _StderrLogger()
_settings: dict[str, str] = {}  # what configure_logging chose, for child processes


def configure_logging(level: str | None = None, fmt: str | None = None) -> None:
    """Configure structlog for the process (idempotent; later calls re-apply)."""
    global _configured
    level_name = (level or os.environ.get("AGENTRT_LOG_LEVEL", "info")).upper()
    fmt = fmt or os.environ.get("AGENTRT_LOG_FORMAT") or ("console" if sys.stderr.isatty() else "json")
    _settings.update(AGENTRT_LOG_LEVEL=level_name.lower(), AGENTRT_LOG_FORMAT=fmt)
    renderer: Any = (
        structlog.dev.ConsoleRenderer() if fmt == "console" else structlog.processors.JSONRenderer()
    )
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.StackInfoRenderer(),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping().get(level_name, logging.INFO)
        ),
        logger_factory=_StderrLoggerFactory(),
        cache_logger_on_first_use=False,
    )
    _configured = True


def logging_env() -> dict[str, str]:
    """Environment variables that make a child process (a replica worker) log as this one does."""
    return dict(_settings)


def get_logger(name: str, **bound: Any) -> Any:
    """Return a structlog logger bound to ``logger=name`` (configures logging on first use)."""
    if not _configured:
        configure_logging()
    return structlog.get_logger(name).bind(logger=name, **bound)
