"""Make the program context follow ``threading.Thread`` and ``ThreadPoolExecutor``.

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
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from contextvars import copy_context
from typing import Any, ParamSpec, TypeVar

from agentrt.sdk.context import prepare_fork

ENV_VAR = "AGENTRT_INSTRUMENT"
_MARK = "__agentrt_original__"

P = ParamSpec("P")
T = TypeVar("T")

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


def _env_disabled() -> bool:
    return os.environ.get(ENV_VAR, "1").strip().lower() in {"0", "false", "no", "off"}


def instrument(*, threads: bool = True) -> None:
    """Install (``threads=True``) or remove (``threads=False``) the thread instrumentation.

    Idempotent. An explicit call wins over the environment variable; removing it
    also stops the SDK from installing it again on the next program entry.
    """
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
    instrument(threads=True)


def is_instrumented() -> bool:
    """True while threads and thread pools carry the program context."""
    return threading.Thread.start is _thread_start and ThreadPoolExecutor.submit is _pool_submit
