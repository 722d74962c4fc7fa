"""``@agentrt.program``, ``@agentrt.tool`` and ``agentrt.parallel()``: the user-facing scopes.

A program scope either starts a program (the outermost one, or one marked
``detached=True``) or joins the program already running, so a sub-agent
called from an agent is part of its caller's program. The scope that started
a program ends it when it exits, however it exits (return, exception,
cancellation), on every server that saw it.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Awaitable, Callable
from contextvars import Token
from types import TracebackType
from typing import Any, ParamSpec, TypeVar, overload

from agentrt.sdk import lifecycle
from agentrt.sdk.context import (
    Binding,
    ProgramContext,
    ProgramRecord,
    Strand,
    current_program,
    install,
    new_binding,
    peek,
    resolve,
    restore,
)
from agentrt.sdk.instrument import ensure_instrumented

P = ParamSpec("P")
T = TypeVar("T")
F = TypeVar("F", bound=Callable[..., Any])


def _qualname(fn: Callable[..., Any]) -> str:
    """The name of a function, a callable object, or what a ``functools.partial`` calls."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    name = getattr(fn, "__qualname__", None)
    return name if isinstance(name, str) else type(fn).__qualname__


async def _awaited_in(scope: ProgramScope, coro: Awaitable[T]) -> T:
    async with scope:
        return await coro


def _reject_generators(fn: Callable[..., Any], what: str) -> None:
    if inspect.isgeneratorfunction(fn) or inspect.isasyncgenfunction(fn):
        raise TypeError(
            f"@agentrt.{what} cannot wrap the generator {fn.__qualname__}: its body runs after "
            "the call returns; decorate the function that consumes it instead"
        )


class ProgramScope:
    """One entry into a program: a context manager (sync or async) and a decorator.

    ``with agentrt.program("name") as ctx:`` yields the :class:`ProgramContext`.
    An instance is entered once at a time; as a decorator it opens a fresh
    scope for every call of the decorated function.
    """

    def __init__(
        self,
        name: str | None = None,
        *,
        tenant: str | None = None,
        detached: bool = False,
        metadata: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.tenant = tenant
        self.detached = detached
        self.metadata = dict(metadata or {})
        self._record: ProgramRecord | None = None
        self._token: Token[Binding | None] | None = None
        self._previous: Binding | None = None
        self._active = False

    # -- as a decorator ---------------------------------------------------------------
    @overload
    def __call__(self, fn: Callable[P, Awaitable[T]]) -> Callable[P, Awaitable[T]]: ...
    @overload
    def __call__(self, fn: Callable[P, T]) -> Callable[P, T]: ...
    def __call__(self, fn: Callable[P, Any]) -> Callable[P, Any]:
        _reject_generators(fn, "program")
        name = self.name or _qualname(fn)

        def fresh() -> ProgramScope:
            return ProgramScope(
                name, tenant=self.tenant, detached=self.detached, metadata=self.metadata
            )

        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def run_async(*args: P.args, **kwargs: P.kwargs) -> Any:
                async with fresh():
                    return await fn(*args, **kwargs)

            return run_async

        @functools.wraps(fn)
        def run(*args: P.args, **kwargs: P.kwargs) -> Any:
            with fresh():
                result = fn(*args, **kwargs)
            if inspect.iscoroutine(result):
                # An async callable that is no coroutine function (an object with an async
                # __call__, a plain decorator around an async function): its body runs when
                # the coroutine is awaited, so that is what the program must span.
                return _awaited_in(fresh(), result)
            return result

        return run

    # -- as a context manager ---------------------------------------------------------
    def _enter(self) -> ProgramContext:
        if self._active:
            raise RuntimeError("this agentrt.program scope is already active; create a new one")
        self._active = True
        ensure_instrumented()
        outer = resolve()
        if outer is not None and not self.detached:
            self._record = None  # joins the running program
        else:
            tenant = self.tenant
            if tenant is None and outer is not None:
                tenant = outer.strand.record.tenant
            record = ProgramRecord(name=self.name, tenant=tenant, metadata=self.metadata)
            self._record = record
            self._previous = peek()
            self._token = install(new_binding(Strand(record, record.new_thread_id())))
        ctx = current_program()
        assert ctx is not None
        return ctx

    def _leave(self) -> ProgramRecord | None:
        record, token = self._record, self._token
        self._record, self._token, self._active = None, None, False
        if token is not None:
            restore(token, self._previous)
        self._previous = None
        return record

    def __enter__(self) -> ProgramContext:
        return self._enter()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        record = self._leave()
        if record is not None:
            lifecycle.end_program_sync(record)

    async def __aenter__(self) -> ProgramContext:
        return self._enter()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        record = self._leave()
        if record is not None:
            import anyio

            # Ending must happen even when the program was cancelled.
            with anyio.CancelScope(shield=True):
                await lifecycle.end_program_async(record)


@overload
def program(fn: F, /) -> F: ...
@overload
def program(
    fn_or_name: str | None = None,
    /,
    *,
    tenant: str | None = None,
    detached: bool = False,
    metadata: dict[str, str] | None = None,
    name: str | None = None,
) -> ProgramScope: ...
def program(
    fn_or_name: Callable[..., Any] | str | None = None,
    /,
    *,
    tenant: str | None = None,
    detached: bool = False,
    metadata: dict[str, str] | None = None,
    name: str | None = None,
) -> Any:
    """Mark an agent program: ``@program``, ``@program("name", detached=True)``, ``with program():``.

    The outermost program scope starts a program (a new id) and ends it when it
    exits; a nested scope joins the running program unless ``detached=True``.
    ``tenant`` and ``metadata`` travel in the program's announcement.
    """
    if callable(fn_or_name):
        return ProgramScope(name, tenant=tenant, detached=detached, metadata=metadata)(fn_or_name)
    return ProgramScope(fn_or_name or name, tenant=tenant, detached=detached, metadata=metadata)


def _tool_done(strand: Strand, started: float) -> None:
    strand.tool_depth -= 1
    if strand.tool_depth == 0:
        elapsed = time.perf_counter() - started
        strand.pending_interrupt += elapsed
        strand.record.add_interrupt(elapsed)


class ToolSpan:
    """One tool run reported by a framework hook (start and end may come from different code)."""

    __slots__ = ("_done", "started", "strand")

    def __init__(self, strand: Strand) -> None:
        self.strand = strand
        self.started = time.perf_counter()
        self._done = False
        strand.tool_depth += 1

    def end(self) -> None:
        """The tool returned or failed: its time counts toward the thread's next call (once)."""
        if not self._done:
            self._done = True
            _tool_done(self.strand, self.started)


def start_tool_span() -> ToolSpan | None:
    """Start timing a tool in the calling code's program thread; None outside any program."""
    b = resolve()
    return ToolSpan(b.strand) if b is not None else None


@overload
def tool(fn: F, /) -> F: ...
@overload
def tool(fn: None = None, /) -> Callable[[F], F]: ...
def tool(fn: Any = None, /) -> Any:
    """Mark a tool the program calls: its wall time becomes the program's interrupt time.

    The time a thread spends in tools (outermost tool calls only) is sent with
    the thread's next LLM call (``x-agentrt-interrupt``) where the end of the
    thread's previous call is unknown; otherwise the time between the two calls
    is sent, which includes it. The outermost tool of a thread also tells the
    program's servers when it starts and ends (see :mod:`agentrt.sdk.lifecycle`),
    so they can hold the program's KV meanwhile; tools timed by a framework
    hook (:func:`start_tool_span`) are timed only. Outside a program the
    function runs unchanged.
    It also takes a tool object of LangChain, the OpenAI Agents SDK or
    pydantic-ai (``@agentrt.tool`` above the framework's decorator) and times
    the function inside it; below the framework's decorator it works as on any
    function.
    """
    if fn is None:
        return tool
    from agentrt.integrations import framework_tool

    adapted = framework_tool(fn, timed_function)
    if adapted is not None:
        return adapted
    _reject_generators(fn, "tool")
    return timed_function(fn)


def timed_function(fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (sync or async) timed as a tool of the calling program thread; the outermost
    tool of a thread also signals its start and end to the program's servers."""
    wrapped = fn
    name = _qualname(fn)

    async def timed(coro: Awaitable[Any]) -> Any:
        b = resolve()
        if b is None:
            return await coro
        strand = b.strand
        outermost = strand.tool_depth == 0
        if outermost:
            await lifecycle.tool_signal_async(
                strand.record, lifecycle.tool_body("start", name, strand.thread_id)
            )
        strand.tool_depth += 1
        started = time.perf_counter()
        try:
            return await coro
        finally:
            _tool_done(strand, started)
            if outermost:
                import anyio

                with anyio.CancelScope(shield=True):  # sent even when the tool was cancelled
                    await lifecycle.tool_signal_async(
                        strand.record, lifecycle.tool_body("end", name, strand.thread_id)
                    )

    if inspect.iscoroutinefunction(wrapped):

        @functools.wraps(wrapped)
        async def run_async(*args: Any, **kwargs: Any) -> Any:
            return await timed(wrapped(*args, **kwargs))

        return run_async

    @functools.wraps(wrapped)
    def run(*args: Any, **kwargs: Any) -> Any:
        b = resolve()
        if b is None:
            return wrapped(*args, **kwargs)
        strand = b.strand
        outermost = strand.tool_depth == 0
        if outermost:
            lifecycle.tool_signal_sync(
                strand.record, lifecycle.tool_body("start", name, strand.thread_id)
            )
        strand.tool_depth += 1
        started = time.perf_counter()
        try:
            result = wrapped(*args, **kwargs)
        finally:
            _tool_done(strand, started)
            if outermost:
                lifecycle.tool_signal_sync(
                    strand.record, lifecycle.tool_body("end", name, strand.thread_id)
                )
        if inspect.iscoroutine(result):
            # An async tool behind a sync-looking callable: its work happens when awaited.
            return timed(result)
        return result

    return run


class parallel:
    """Calls made directly in this block run in parallel: each is a new thread of the program.

    Threads and tasks fork by themselves; this is for parallelism the SDK cannot
    see, such as several streaming calls opened and consumed from one thread.
    Every LLM call in the block gets its own thread id and the call made before
    the block as its parent; after the block the thread follows the last of them.
    Outside a program it does nothing.
    """

    def __init__(self) -> None:
        self._token: Token[Binding | None] | None = None
        self._outer: Binding | None = None
        self._branching: Binding | None = None

    def __enter__(self) -> parallel:
        outer = resolve()
        if outer is not None:
            self._outer = outer
            self._branching = new_binding(outer.strand, branching=True)
            self._token = install(self._branching)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is None or self._branching is None:
            return
        restore(self._token, self._outer)
        last = self._branching.branch_last
        if last is not None:
            # Resolved first: should a task continue the strand meanwhile, this code forks
            # (a strand of its own) rather than move the task's strand.
            outer = resolve()
            if outer is not None:
                outer.strand.last_call_id = last
            resolve()  # refreshes the restored binding, so copies taken now fork after `last`
        self._token = self._outer = self._branching = None

    async def __aenter__(self) -> parallel:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
