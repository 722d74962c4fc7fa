"""``agentrt.instrument()``: programs follow threads, and every openai client carries them.

Threads
-------

asyncio and anyio copy the context into every task by themselves, and
``anyio.to_thread.run_sync`` and ``asyncio.to_thread`` copy it into their
worker thread; the standard library's threads and thread pools do not. The
SDK wraps ``Thread.start`` and ``ThreadPoolExecutor.submit`` (which
``Executor.map`` and ``loop.run_in_executor`` go through) so that work started
inside a program runs in a fresh ``copy_context()`` of the code that started
it: one copy per thread or submitted task, never one Context shared between
threads. Outside a program the wrappers call the originals unchanged.

Installed on the first program entry, once. Off switch:
``agentrt.instrument(threads=False)``, or ``AGENTRT_INSTRUMENT=0`` in the
environment (then threads started inside a program run outside of it, and
only ``agentrt.parallel`` and explicit ``contextvars`` copies carry it).

The openai library
------------------
Agent frameworks build their own ``openai.OpenAI`` / ``AsyncOpenAI``.
``agentrt.instrument()`` (an explicit call, never automatic) gives both
classes the request hook of ``agentrt.OpenAI``, so every client, whoever
built it and whenever, carries the current program; outside a program the
hook hands over to openai at once. Off switch: ``instrument(openai=False)``,
or ``AGENTRT_INSTRUMENT_OPENAI=0`` (or ``AGENTRT_INSTRUMENT=0``) where the
call leaves the choice to the environment. :func:`instrument_client` does the
same for one client only.
"""

from __future__ import annotations

import os
import sys
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any, ParamSpec, TypeVar

from agentrt.sdk.context import prepare_fork

ENV_VAR = "AGENTRT_INSTRUMENT"
ENV_VAR_OPENAI = "AGENTRT_INSTRUMENT_OPENAI"
_MARK = "__agentrt_original__"

P = ParamSpec("P")
T = TypeVar("T")
C = TypeVar("C")

_lock = threading.Lock()
_installed = False
_disabled = False


# Set while the original submit runs: the pool may start a worker thread then, and a
# worker outlives the program, so it must not inherit the program (its tasks do).
_in_submit = threading.local()


def _thread_start(self: threading.Thread) -> None:
    if not getattr(_in_submit, "active", False) and prepare_fork():
        ctx = copy_context()
        run = self.run
        # An instance attribute, so subclasses that override run() are covered too.
        self.run = lambda: ctx.run(run)  # type: ignore[method-assign]
    _original_start(self)


def _pool_submit(
    self: ThreadPoolExecutor, fn: Callable[P, T], /, *args: P.args, **kwargs: P.kwargs
) -> Future[T]:
    _in_submit.active = True
    try:
        if prepare_fork():
            future: Future[T] = _original_submit(self, copy_context().run, fn, *args, **kwargs)
        else:
            future = _original_submit(self, fn, *args, **kwargs)
    finally:
        _in_submit.active = False
    return future


_original_start: Callable[[threading.Thread], None] = threading.Thread.start
_original_submit: Callable[..., Any] = ThreadPoolExecutor.submit
setattr(_thread_start, _MARK, _original_start)
setattr(_pool_submit, _MARK, _original_submit)


def _env_off(name: str) -> bool:
    return os.environ.get(name, "1").strip().lower() in {"0", "false", "no", "off"}


def _env_disabled() -> bool:
    return _env_off(ENV_VAR)


def instrument(*, threads: bool | None = None, openai: bool | None = None) -> None:
    """Install (True) or remove (False) the thread and the openai instrumentation.

    ``None`` (the default) installs it unless the environment switches it off:
    ``AGENTRT_INSTRUMENT=0`` for both, ``AGENTRT_INSTRUMENT_OPENAI=0`` for the
    openai library. An explicit True or False wins over the environment.
    Idempotent. Removing the thread instrumentation also stops the SDK from
    installing it again on the next program entry.
    """
    if threads is None:
        threads = not _env_disabled()
    if openai is None:
        openai = not (_env_disabled() or _env_off(ENV_VAR_OPENAI))
    _set_threads(threads)
    if openai:
        from agentrt.sdk import openai_clients

        openai_clients.install()
    elif "agentrt.sdk.openai_clients" in sys.modules:  # never installed if never imported
        sys.modules["agentrt.sdk.openai_clients"].uninstall()


def uninstrument() -> None:
    """Remove all instrumentation (threads and openai); program entry no longer installs it."""
    instrument(threads=False, openai=False)


def instrument_client(client: C) -> C:
    """Make one existing ``openai`` or ``httpx`` client carry the current program; returns it.

    An openai client (sync or async, any subclass) gets the request hook of
    ``agentrt.OpenAI``, its ``with_options`` copies too. An httpx (or httpx2)
    client gets request and response event hooks that add the program headers,
    note each call's end, and announce and end programs on the servers it
    calls through the client itself. Idempotent; nothing global is patched.
    """
    import openai as openai_module

    if isinstance(client, (openai_module.OpenAI, openai_module.AsyncOpenAI)):
        from agentrt.sdk.openai_clients import instrument_openai_client

        instrument_openai_client(client)
        return client
    from agentrt.sdk.http import hook_httpx_client

    if not hook_httpx_client(client):
        raise TypeError(
            "agentrt.instrument_client() takes an openai.OpenAI / AsyncOpenAI or an "
            f"httpx Client / AsyncClient, not {type(client).__qualname__}"
        )
    return client


def _set_threads(threads: bool) -> None:
    global _installed, _disabled
    with _lock:
        if threads:
            if not getattr(threading.Thread.start, _MARK, None):
                threading.Thread.start = _thread_start  # type: ignore[method-assign]
            if not getattr(ThreadPoolExecutor.submit, _MARK, None):
                ThreadPoolExecutor.submit = _pool_submit  # type: ignore[method-assign,assignment]
            _installed, _disabled = True, False
        else:
            if threading.Thread.start is _thread_start:
                threading.Thread.start = _original_start  # type: ignore[method-assign,assignment]
            if ThreadPoolExecutor.submit is _pool_submit:
                ThreadPoolExecutor.submit = _original_submit  # type: ignore[method-assign]
            _installed, _disabled = False, True


def ensure_instrumented() -> None:
    """Install the instrumentation unless it is installed or switched off (program entry calls it)."""
    global _disabled
    if _installed or _disabled:
        return
    if _env_disabled():
        _disabled = True
        return
    _set_threads(True)


def is_instrumented() -> bool:
    """True while threads and thread pools carry the program context."""
    return threading.Thread.start is _thread_start and ThreadPoolExecutor.submit is _pool_submit
