"""Where the current program lives: one ContextVar, and the fork bookkeeping of its DAG.

The ContextVar holds a :class:`Binding`: which *strand* (thread of the
program) the code runs in, and who owns that binding (the OS thread and, under
asyncio, the task that installed it). asyncio and anyio copy the context into
every task they start, and the SDK's instrumentation copies it into threads;
so a binding can show up in code that runs concurrently with its owner. Every
SDK entry point calls :func:`resolve`, which notices that case and *forks*: a
new strand with its own thread id, whose first call's parent is the call the
owner had made when the context was copied (the binding is replaced after
every call, so a copied context keeps the value of its moment). Nothing is
patched to make this work for tasks: comparing owners is enough.

One exception keeps sequential code on one thread when a framework runs each
step in a task of its own: a task of the owner's event loop whose context
holds the owner's latest binding (the owner made no call since starting it)
*continues* the owner's strand while it runs, unless another task already
does. Tasks that use the strand meanwhile fork, as does the owner if it makes
a call before that task ends; so the branches of a gather, which overlap,
stay parallel threads (the first to call continues the strand).

All per-call work here is a few attribute reads; see ``agentrt bench sdk``.
"""

from __future__ import annotations

import asyncio
import itertools
import threading
import time
import weakref
from collections.abc import Callable
from contextvars import ContextVar, Token
from dataclasses import dataclass
from typing import TYPE_CHECKING

from agentrt.protocol.headers import (
    MAX_NAME_LENGTH,
    call_headers,
    format_headers,
    program_headers,
)
from agentrt.sdk.ids import call_id as new_call_id
from agentrt.sdk.ids import uuid7

if TYPE_CHECKING:
    from agentrt.sdk.servers import ServerEntry


class _ThisThread(threading.local):
    """The calling OS thread's ``threading.Thread``, read without a Python-level call."""

    def __init__(self) -> None:
        self.thread = threading.current_thread()


_this_thread = _ThisThread()
_running_loop = asyncio._get_running_loop
_current_task = asyncio.current_task
_perf_counter = time.perf_counter

# How many finished calls a program remembers the end time of. A call's end matters to
# the calls that follow it, which start soon after; older ends are never looked up.
MAX_CALL_ENDS = 256
_TRIM = 64


@dataclass(frozen=True, slots=True)
class ProgramContext:
    """The program the calling code runs in, as :func:`agentrt.current_program` reports it."""

    program_id: str
    thread_id: str
    # The call the next LLM call of this thread will follow (None before the first).
    parent_call_id: str | None
    tenant: str | None
    name: str | None


class ProgramRecord:
    """One program as this process sees it, shared by all of its strands."""

    __slots__ = (
        "_thread_counter",
        "_thread_prefix",
        "call_ends",
        "ended",
        "headers",
        "interrupt_seconds",
        "lock",
        "metadata",
        "name",
        "owns_lifecycle",
        "program_id",
        "servers",
        "started_at",
        "tenant",
    )

    def __init__(
        self,
        *,
        program_id: str | None = None,
        name: str | None = None,
        tenant: str | None = None,
        metadata: dict[str, str] | None = None,
        owns_lifecycle: bool = True,
        thread_prefix: str = "",
    ) -> None:
        self.program_id = program_id or uuid7()
        # A name is a label: servers refuse longer ones (in the header of every call and in
        # the announcement), so a long one is cut rather than failing the program's calls.
        self.name = name[:MAX_NAME_LENGTH] if name else name
        # The headers that name the program on each of its calls (id and name never change).
        self.headers = program_headers(self.program_id, self.name)
        self.tenant = tenant
        self.metadata = metadata or {}
        # False for a program adopted from incoming headers: its owner ends it elsewhere.
        self.owns_lifecycle = owns_lifecycle
        self.started_at = time.time()
        self.lock = threading.Lock()
        self._thread_prefix = thread_prefix
        self._thread_counter = itertools.count()
        self.interrupt_seconds = 0.0
        self.servers: dict[str, ServerEntry] = {}
        self.ended = False
        # call id -> time.perf_counter() when the call finished (its response was read):
        # the start of the interrupt before the calls that follow it. The newest only.
        self.call_ends: dict[str, float] = {}

    def new_thread_id(self) -> str:
        with self.lock:
            n = next(self._thread_counter)
        return f"{self._thread_prefix}{n}"

    def add_interrupt(self, seconds: float) -> None:
        with self.lock:
            self.interrupt_seconds += seconds

    def call_ended(self, call_id: str) -> None:
        """Note that ``call_id`` finished now (its whole response was read, or it failed)."""
        ends = self.call_ends
        ends[call_id] = _perf_counter()
        if len(ends) > MAX_CALL_ENDS + _TRIM:
            with self.lock:  # the oldest go, a batch at a time
                for old in list(ends)[: len(ends) - MAX_CALL_ENDS]:
                    ends.pop(old, None)


class Strand:
    """One thread of a program: the chain of its calls. Only its owner mutates it."""

    __slots__ = (
        "calls",
        "claim_point",
        "forked_from",
        "holder",
        "last_call_id",
        "owner_binding",
        "pending_interrupt",
        "record",
        "thread_id",
        "tool_depth",
    )

    def __init__(
        self, record: ProgramRecord, thread_id: str, forked_from: str | None = None
    ) -> None:
        self.record = record
        self.thread_id = thread_id
        self.forked_from = forked_from  # the call this strand forked after
        self.last_call_id = forked_from  # parent of the strand's next call
        self.pending_interrupt = 0.0  # tool seconds since the strand's last call
        self.tool_depth = 0
        self.calls = 0
        # A task that continues this strand for its owner (a step run in a task of its own);
        # while it runs, other tasks that use the strand's binding fork instead.
        self.holder: _Ref[asyncio.Task[object]] | None = None
        self.claim_point: str | None = None  # the strand's last call when the holder took it
        # The owner's latest binding: a task whose copied context holds it was started by
        # the owner since its last call, so it may continue the strand.
        self.owner_binding: Binding | None = None


_Ref = weakref.ReferenceType


class Binding:
    """What the ContextVar holds: a strand, its owner, and the fork point for copies."""

    __slots__ = (
        "branch_last",
        "branching",
        "claimed",
        "continuation",
        "fork_point",
        "strand",
        "task_ref",
        "thread_ref",
    )

    def __init__(
        self,
        strand: Strand,
        thread_ref: _Ref[threading.Thread] | None,
        task_ref: _Ref[asyncio.Task[object]] | None,
        fork_point: str | None,
        branching: bool = False,
    ) -> None:
        self.strand = strand
        # None: an unowned binding (adopted from headers); the first code to use it claims it.
        self.thread_ref = thread_ref
        self.task_ref = task_ref
        self.fork_point = fork_point  # the strand's last call when this binding was set
        self.branching = branching  # inside agentrt.parallel(): each call is its own branch
        self.branch_last: str | None = None
        self.claimed = False
        # The task that continues a sync owner's strand (asyncio.run inside a program).
        self.continuation: _Ref[asyncio.Task[object]] | None = None


_BINDING: ContextVar[Binding | None] = ContextVar("agentrt_program", default=None)
_claim_lock = threading.Lock()


def _owner() -> tuple[threading.Thread, asyncio.Task[object] | None]:
    loop = _running_loop()
    return _this_thread.thread, (_current_task(loop) if loop is not None else None)


def _refs(
    thread: threading.Thread, task: asyncio.Task[object] | None
) -> tuple[_Ref[threading.Thread], _Ref[asyncio.Task[object]] | None]:
    return weakref.ref(thread), (weakref.ref(task) if task is not None else None)


def install(binding: Binding) -> Token[Binding | None]:
    """Make ``binding`` current in this context; the token restores the previous one."""
    return _BINDING.set(binding)


def restore(token: Token[Binding | None], previous: Binding | None) -> None:
    """Undo :func:`install` (also from a context other than the one that installed it)."""
    try:
        _BINDING.reset(token)
    except ValueError:
        _BINDING.set(previous)


# The binding in this context, as it is (no fork check): every instrumented request
# asks, inside programs and out, so it is the ContextVar's own method.
peek: Callable[[], Binding | None] = _BINDING.get


def new_binding(strand: Strand, *, owned: bool = True, branching: bool = False) -> Binding:
    """A binding for ``strand`` owned by the calling thread/task (or unowned: claimed on first use)."""
    if not owned:
        return Binding(strand, None, None, strand.last_call_id)
    thread_ref, task_ref = _refs(*_owner())
    b = Binding(strand, thread_ref, task_ref, strand.last_call_id, branching)
    if not branching:
        strand.owner_binding = b
    return b


def _owned_here(b: Binding) -> bool:
    """True when the calling thread/task is the one that installed ``b``."""
    thread_ref = b.thread_ref
    if thread_ref is None or thread_ref() is not _this_thread.thread:
        return False
    loop = _running_loop()
    task = _current_task(loop) if loop is not None else None
    task_ref = b.task_ref
    return (task is None and task_ref is None) or (task_ref is not None and task_ref() is task)


def resolve() -> Binding | None:
    """The binding the calling code should use: forks first if it runs outside the owner."""
    b = _BINDING.get()
    if b is None:
        return None
    if not _owned_here(b):
        return _rebind(b)
    if b.strand.holder is not None and not b.branching and _held_elsewhere(b.strand):
        # The owner runs while a task it started continues its strand: the owner forks.
        return _fork(b, *_owner())
    if b.fork_point is not b.strand.last_call_id and not b.branching:
        # The strand moved on in another context (a continuation): refresh the snapshot.
        b = _advance(b)
    return b


def prepare_fork() -> bool:
    """Called where a thread or pool task is about to copy the context: True inside a program.

    When the starting code owns the binding, a stale fork point is refreshed
    first (the strand moved on in another context), so the copy forks after
    the owner's latest call. Nothing is forked here: code that starts threads
    without using the SDK itself (a server loop, a worker pool) gets no thread
    id, and its threads fork from the same call it would have.
    """
    b = _BINDING.get()
    if b is None:
        return False
    if not b.branching and b.fork_point is not b.strand.last_call_id and _owned_here(b):
        _advance(b)
    return True


def _rebind(b: Binding) -> Binding:
    thread, task = _owner()
    strand = b.strand
    if b.thread_ref is None:
        # Adopted from headers: the first user continues the caller's thread; later ones fork.
        with _claim_lock:
            first = not b.claimed
            b.claimed = True
        if first:
            nb = Binding(strand, *_refs(thread, task), strand.last_call_id)
            strand.owner_binding = nb
            _BINDING.set(nb)
            return nb
    elif task is not None and b.task_ref is None and b.thread_ref() is thread:
        # An event loop run from the owner's own sync code (asyncio.run inside a program):
        # the owner is blocked on it, so the first task to use the SDK continues its strand.
        claimed = b.continuation() if b.continuation is not None else None
        if claimed is None or claimed is task:
            b.continuation = weakref.ref(task)
            nb = Binding(strand, *_refs(thread, task), strand.last_call_id)
            strand.owner_binding = nb
            _BINDING.set(nb)
            return nb
    elif (
        task is not None
        and b is strand.owner_binding
        and b.thread_ref() is thread
        and not _held_elsewhere(strand)
    ):
        # A task of the owner's event loop, started since the owner's last call (a step
        # run in a task of its own, the first branch of a gather): it continues the strand
        # while it runs. Tasks that use the strand meanwhile fork, so concurrent tasks stay
        # parallel threads; so does the owner, should it make a call before the task ends.
        strand.holder = weakref.ref(task)
        strand.claim_point = strand.last_call_id
        nb = Binding(strand, *_refs(thread, task), strand.last_call_id)
        _BINDING.set(nb)
        return nb
    return _fork(b, thread, task)


def _held_elsewhere(strand: Strand) -> bool:
    """True while a task other than the calling one continues ``strand``."""
    ref = strand.holder
    if ref is None:
        return False
    holder = ref()
    if holder is None or holder.done():
        strand.holder = None
        return False
    loop = _running_loop()
    return holder is not (_current_task(loop) if loop is not None else None)


def _fork(b: Binding, thread: threading.Thread, task: asyncio.Task[object] | None) -> Binding:
    strand = b.strand
    point = b.fork_point
    if b is strand.owner_binding and strand.holder is not None:
        # The owner's own position: where the strand was when the task continuing it took
        # it (tasks that continued it before, and finished, moved it for the owner).
        point = strand.claim_point
    record = strand.record
    forked = Strand(record, record.new_thread_id(), forked_from=point)
    nb = Binding(forked, *_refs(thread, task), point)
    forked.owner_binding = nb
    _BINDING.set(nb)
    return nb


_new_object = object.__new__


def _moved(b: Binding, fork_point: str | None) -> Binding:
    """A binding like ``b`` (strand, owner; not branching) whose fork point is ``fork_point``.

    Made without ``Binding.__init__`` (called from C, a Python ``__init__`` costs a
    second entry into the interpreter): every LLM call makes one.
    """
    nb = _new_object(Binding)
    nb.strand = b.strand
    nb.thread_ref = b.thread_ref
    nb.task_ref = b.task_ref
    nb.fork_point = fork_point
    nb.branching = False
    nb.branch_last = None
    nb.claimed = False
    nb.continuation = None
    return nb


def _advance(b: Binding) -> Binding:
    strand = b.strand
    nb = _moved(b, strand.last_call_id)
    if strand.holder is None:
        strand.owner_binding = nb
    _BINDING.set(nb)
    return nb


def begin_call() -> tuple[ProgramRecord, dict[str, str]] | None:
    """Start an LLM call from the calling code: a fresh call id and the headers it travels with.

    The call id becomes the parent of the strand's next call; the strand's
    pending tool time is handed over (and reset). None outside any program.

    It runs on every LLM call, so the common case (the owner calls, in its own
    strand, with no task continuing it) is checked inline and the headers are
    built here; everything else goes through :func:`resolve`.
    """
    b = _BINDING.get()
    if b is None:
        return None
    strand = b.strand
    thread_ref = b.thread_ref
    as_it_is = (
        strand.holder is None
        and not b.branching
        and b.fork_point is strand.last_call_id
        and thread_ref is not None
        and thread_ref() is _this_thread.thread
        and ((b.task_ref is None and _running_loop() is None) or _owned_here(b))
    )
    if not as_it_is:
        b = resolve()
        if b is None:
            return None
        strand = b.strand
    record = strand.record
    call_id = new_call_id()
    if b.branching:
        thread_id = record.new_thread_id()
        parent = b.fork_point
        b.branch_last = call_id
    else:
        thread_id = strand.thread_id
        parent = strand.last_call_id
        strand.last_call_id = call_id
        nb = _moved(b, call_id)
        if strand.holder is None:
            strand.owner_binding = nb
        _BINDING.set(nb)
    strand.calls += 1
    # The interrupt is the time since the call this one follows finished, whatever ran
    # meanwhile; tool time measured by @agentrt.tool or a framework hook stands in where
    # that end is unknown (a parent in another process, a stream never read to its end).
    interrupt = strand.pending_interrupt
    strand.pending_interrupt = 0.0
    if parent is not None:
        ended = record.call_ends.get(parent)
        if ended is not None:
            elapsed = _perf_counter() - ended
            if elapsed > interrupt:
                interrupt = elapsed
    return record, call_headers(record.headers, thread_id, parent, call_id, interrupt)


def propagation_headers() -> dict[str, str]:
    """Headers that carry the current program across HTTP (no call id: not an LLM call).

    Empty outside any program. A server that receives them (through
    :class:`agentrt.ProgramContextMiddleware`) continues the caller's thread.
    """
    b = resolve()
    if b is None:
        return {}
    strand = b.strand
    record = strand.record
    return format_headers(
        program_id=record.program_id,
        thread_id=strand.thread_id,
        parent_call_id=b.fork_point if b.branching else strand.last_call_id,
        program_name=record.name,
    )


def current_program() -> ProgramContext | None:
    """The program the calling code runs in (its thread, and the parent of its next call)."""
    b = resolve()
    if b is None:
        return None
    strand = b.strand
    record = strand.record
    return ProgramContext(
        program_id=record.program_id,
        thread_id=strand.thread_id,
        parent_call_id=b.fork_point if b.branching else strand.last_call_id,
        tenant=record.tenant,
        name=record.name,
    )
