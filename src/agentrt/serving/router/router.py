"""The program-aware router: one :class:`EngineClient` in front of several engines.

The router owns the process table and the load balancer of
:mod:`agentrt.scheduling` (all balancing policy lives there) and keeps its
backends alive:

- each call is routed by the balancer (locality: a call whose program's last
  context an engine keeps pinned, as the engine reported in that call's
  timings, back to that engine; else short calls to the least used engine,
  long calls to the engine the program is pinned to), counted
  on its engine until it ends, and recorded in its program's entry; its
  service updates the program's priority by the scheduler's own rule;
- engines that schedule by program (embedded replicas, Ray actors) get the
  program's service across all engines in the call's tag
  (``ProgramTag.attained_service``), since each sees only its own calls;
  those that do not (vLLM, SGLang) get the program's priority as the
  call's ``priority``: the queue level that service falls in;
- a program's tool signals (``POST /v1/programs/{id}/tool``) go to the engines
  that ran its calls, which hold its KV while the tool runs (backends whose
  engine does not listen drop them: remote servers other than agentrt); while
  its tool runs, the engine that retains the program's context stays its next
  call's choice past the time-to-live that engine reported;
- each backend runs under a supervisor task; a failed health check, a lost
  connection or a worker that exits takes the engine down at once: its
  in-flight calls fail with :class:`EngineUnavailable` (503), its programs
  are unpinned so their next calls go to live engines, and it is restarted
  with backoff;
- the supervisors and the health loop run in one anyio task group the
  router owns (``async with router:``): no stray tasks. A call's tokens
  flow in the caller's own task; the router only cancels the engine await
  in progress when the engine goes down, so no call can hang on a dead one.
"""

from __future__ import annotations

import math
import time
from collections.abc import AsyncIterator, Awaitable, Sequence
from contextlib import AsyncExitStack
from typing import Any, TypeVar

import anyio
import msgspec
from anyio.abc import TaskGroup, TaskStatus

from agentrt.log import get_logger
from agentrt.protocol.engine import (
    EngineError,
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    InvalidRequest,
    ModelInfo,
    ProgramTag,
    TokenEvent,
    ToolSignals,
)
from agentrt.protocol.programs import ToolEvent
from agentrt.scheduling import (
    Balancer,
    BalancerConfig,
    Call,
    CallOutcome,
    NoEngineAvailable,
    ProcessTable,
    ProgramAccounting,
    SchedulerConfig,
    make_policy,
)
from agentrt.serving.router.backends import Backend
from agentrt.serving.router.backends.errors import EngineLost

log = get_logger("agentrt.serving.router")
_CLOSE_TIMEOUT = 5.0  # longest wait for an engine to close an abandoned call
T = TypeVar("T")


class _Interrupted(Exception):
    """The router cancelled the engine await of a call (engine down, abort, shutdown)."""


class RouterConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How the router watches its engines (TOML table ``[router]``)."""

    health_interval_s: float = 5.0  # between health checks of each live engine
    health_timeout_s: float = 10.0  # a check that takes longer fails
    restart: bool = True  # bring a lost engine back (respawn a worker, reconnect a server)
    restart_backoff_s: float = 1.0  # first wait before a restart; doubles per failed attempt
    restart_backoff_max_s: float = 30.0
    chars_per_token: float = 4.0  # prompt length estimate for routing when the prompt is text

    def __post_init__(self) -> None:
        for name in (
            "health_interval_s",
            "health_timeout_s",
            "restart_backoff_s",
            "restart_backoff_max_s",
            "chars_per_token",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"RouterConfig.{name} must be > 0")


class EngineStatus(msgspec.Struct, kw_only=True):
    """One engine as the router sees it (for health endpoints and tests)."""

    engine_id: str
    up: bool
    reason: str  # why it is down ("" when up)
    live_calls: int
    restarts: int


class _Engine:
    """Router-side state of one backend."""

    def __init__(self, backend: Backend) -> None:
        self.backend = backend
        self.up = False
        self.reason = "not started"
        self.restarts = 0
        self.incarnation = 0  # bumped each time the engine comes up
        self.scope: anyio.CancelScope | None = None  # the supervisor's current run of the backend
        self.calls: dict[str, _LiveCall] = {}
        self.programs: set[str] = set()  # programs this incarnation was told about

    @property
    def engine_id(self) -> str:
        return self.backend.engine_id


class _LiveCall:
    """One routed call: where it runs, its scheduling record, how to stop it."""

    def __init__(
        self, request: GenerationRequest, engine: _Engine, call: Call | None, now: float
    ) -> None:
        self.request = request
        self.engine = engine
        self.call = call  # None for calls outside any program
        self.incarnation = engine.incarnation  # the engine's life this call runs in
        self.dispatched = now
        self.step: anyio.CancelScope | None = None  # around the engine await in progress
        self.failure: EngineError | None = None  # why the router interrupted the call
        self.aborted = False  # Router.abort was called
        self.model_time = 0.0
        self.queue_time = 0.0
        self.tokens = 0

    def interrupt(self, failure: EngineError | None) -> None:
        """Stop waiting on the engine: fail with ``failure``, or end as aborted when it is None."""
        if failure is None:
            self.aborted = True
        elif self.failure is None:
            self.failure = failure
        if self.step is not None:
            self.step.cancel()


def estimate_prompt_tokens(request: GenerationRequest, chars_per_token: float) -> int:
    """Prompt length for routing decisions (the router has no tokenizer; token ids are exact)."""
    if isinstance(request.prompt, list):
        return len(request.prompt)
    chars = len(request.prompt or "")
    for message in request.messages or []:
        chars += len(str(message.get("content") or "")) + 16  # role and template markers
    if request.tools:
        chars += len(msgspec.json.encode(request.tools))
    return math.ceil(chars / chars_per_token)


class Router:
    """An :class:`EngineClient` over N backends. Use as ``async with Router(...) as router``."""

    def __init__(
        self,
        backends: Sequence[Backend],
        *,
        config: RouterConfig | None = None,
        scheduler: SchedulerConfig | None = None,
        balancer: BalancerConfig | None = None,
    ) -> None:
        if not backends:
            raise ValueError("a router needs at least one backend")
        ids = [b.engine_id for b in backends]
        if len(set(ids)) != len(ids):
            raise ValueError(f"backend ids must be unique, got {ids}")
        self.config = config or RouterConfig()
        self.scheduler_config = scheduler or SchedulerConfig()
        self.table = ProcessTable(
            ttl=self.scheduler_config.program_ttl_s,
            max_programs=self.scheduler_config.max_programs,
            max_call_records=self.scheduler_config.max_call_records,
        )
        self.balancer = Balancer(balancer or BalancerConfig(), table=self.table)
        self.accounting = ProgramAccounting(
            self.table,
            make_policy(self.scheduler_config.policy, self.scheduler_config),
            self.scheduler_config.boundaries,
        )
        self._engines = {b.engine_id: _Engine(b) for b in backends}
        self._calls: dict[str, _LiveCall] = {}
        self._tg: TaskGroup | None = None
        self._stack: AsyncExitStack | None = None
        self._closing = False

    # -- lifecycle ---------------------------------------------------------

    async def __aenter__(self) -> Router:
        """Start every backend (concurrently); at least one must come up."""
        async with AsyncExitStack() as stack:
            self._tg = await stack.enter_async_context(anyio.create_task_group())
            stack.callback(self._tg.cancel_scope.cancel)  # exits run in reverse: cancel, then join
            async with anyio.create_task_group() as starting:
                for engine in self._engines.values():
                    starting.start_soon(self._tg.start, self._supervise, engine)
            if any(e.up for e in self._engines.values()):
                self._tg.start_soon(self._watch)
                self._stack = stack.pop_all()
                return self
        self._tg = None
        # Raised outside the task group, so the caller gets it unwrapped.
        raise EngineUnavailable(f"no engine could be started ({self._reasons()})")

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        """Stop routing, fail what is in flight, shut every backend down."""
        self._closing = True
        for live in list(self._calls.values()):
            live.interrupt(EngineUnavailable("the server is shutting down"))
        stack, self._stack = self._stack, None
        if stack is not None:
            await stack.aclose()
        self._tg = None

    async def _supervise(self, engine: _Engine, *, task_status: TaskStatus[None]) -> None:
        """Run one backend; when it is lost, take it down and bring it back with backoff."""
        reported = False
        delay = self.config.restart_backoff_s
        while True:
            try:
                with anyio.CancelScope() as engine.scope:
                    async with anyio.create_task_group() as tg:
                        await tg.start(engine.backend.run)
                        self._engine_up(engine)
                        delay = self.config.restart_backoff_s
                        if not reported:
                            reported = True
                            task_status.started()
                reason = engine.reason if not engine.up else "engine stopped"
            except Exception as e:
                reason = _describe(e)
            self._engine_down(engine, reason)
            if not reported:
                reported = True
                task_status.started()
            if self._closing or not self.config.restart:
                return
            await anyio.sleep(delay)
            delay = min(delay * 2, self.config.restart_backoff_max_s)
            engine.restarts += 1
            log.info("engine_restarting", engine_id=engine.engine_id, attempt=engine.restarts)

    def _engine_up(self, engine: _Engine) -> None:
        engine.up, engine.reason = True, ""
        engine.incarnation += 1
        if engine.engine_id not in self.balancer.engines:
            self.balancer.add_engine(engine.engine_id)
        log.info("engine_up", engine_id=engine.engine_id)

    def _engine_down(self, engine: _Engine, reason: str) -> None:
        """Fail the engine's calls, unpin its programs, stop routing to it."""
        was_up, engine.up, engine.reason = engine.up, False, reason
        if engine.scope is not None:
            engine.scope.cancel()
        failure = EngineUnavailable(f"engine {engine.engine_id} is unavailable: {reason}")
        for live in list(engine.calls.values()):
            live.interrupt(failure)
        engine.programs.clear()
        unpinned = self.balancer.engine_failed(engine.engine_id)
        if was_up and not self._closing:
            log.warning(
                "engine_down",
                engine_id=engine.engine_id,
                reason=reason,
                calls_failed=len(engine.calls),
                programs_unpinned=len(unpinned),
            )

    async def _watch(self) -> None:
        """Health-check live engines and expire idle programs, every ``health_interval_s``."""
        while True:
            await anyio.sleep(self.config.health_interval_s)
            async with anyio.create_task_group() as tg:
                for engine in self._engines.values():
                    if engine.up:
                        tg.start_soon(self._check, engine)
            for program_id in self.table.expire(time.monotonic()):
                self._tg_start(self._forget_program, program_id)  # never holds up the checks

    async def _check(self, engine: _Engine) -> None:
        """Health-check the engine's current life; a failure takes that life down (not a later one)."""
        incarnation = engine.incarnation
        try:
            with anyio.fail_after(self.config.health_timeout_s):
                await engine.backend.check_health()
            return
        except TimeoutError:
            reason = f"health check timed out after {self.config.health_timeout_s:g}s"
        except Exception as e:
            reason = f"health check failed: {_describe(e)}"
        if engine.up and engine.incarnation == incarnation:
            self._engine_down(engine, reason)

    # -- routing -----------------------------------------------------------

    def _route(self, request: GenerationRequest) -> _LiveCall:
        if self._tg is None or self._closing:
            raise EngineUnavailable("the router is not running")
        if request.call_id in self._calls:
            raise InvalidRequest(f"call {request.call_id!r} is already running", param="call_id")
        now = time.monotonic()
        tag = request.program
        tokens = estimate_prompt_tokens(request, self.config.chars_per_token)
        try:
            engine_id = self.balancer.route(tag.program_id if tag else None, tokens, now)
        except NoEngineAvailable:
            raise EngineUnavailable(f"no engine is available ({self._reasons()})") from None
        engine = self._engines[engine_id]
        call = None
        if tag is not None:
            call = Call(
                request.call_id,
                tag.program_id,
                arrival=now,
                prompt_tokens=tokens,
                thread_id=tag.thread_id,
                priority=request.priority,
            )
            self.accounting.admit(call, now)
        live = _LiveCall(request, engine, call, now)
        self._calls[request.call_id] = live
        engine.calls[request.call_id] = live
        return live

    def _request_for(self, live: _LiveCall) -> GenerationRequest:
        """What the engine gets: the program's service across all engines, as the engine expects it.

        Program-aware engines get it in the tag (each only sees the calls
        routed to it); program-unaware ones get the level it maps to as the
        call's ``priority``, and the tag too, for the admission queue that
        holds their calls beyond the server's slots.
        """
        request, call = live.request, live.call
        if call is None or request.program is None:
            return request
        if call.start_value > 0:
            tag = msgspec.structs.replace(request.program, attained_service=call.start_value)
            request = msgspec.structs.replace(request, program=tag)
        if live.engine.backend.program_aware:
            return request
        if request.priority is not None and self.scheduler_config.honor_request_priority:
            return request
        return msgspec.structs.replace(request, priority=call.level)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        live = self._route(request)
        backend = live.engine.backend
        events: AsyncIterator[TokenEvent] | None = None
        outcome = CallOutcome.ABORTED
        try:
            tag = request.program
            if tag is not None and tag.program_id not in live.engine.programs:
                live.engine.programs.add(tag.program_id)
                await self._step(live, backend.start_program(tag))
            events = backend.generate(self._request_for(live))
            while True:
                try:
                    event = await self._step(live, events.__anext__())
                except StopAsyncIteration:
                    outcome = CallOutcome.FINISHED
                    return
                self._account(live, event)
                yield event
        except _Interrupted:  # in any step, start_program's included
            if live.failure is not None:
                raise live.failure from None
            yield TokenEvent(call_id=request.call_id, finish_reason="abort")
        except EngineLost as e:
            # The engine is gone: stop routing to it now, not at the next health check.
            if live.engine.up and live.engine.incarnation == live.incarnation:
                self._engine_down(live.engine, _describe(e))
            raise
        except EngineUnavailable:
            if live.engine.up:  # it refused this call: check whether it is still alive
                self._tg_start(self._check, live.engine)
            raise
        finally:
            if events is not None:
                # Closing the engine's stream aborts the call and frees its KV; wait for it
                # (bounded), so the KV is free when the caller moves on.
                with anyio.CancelScope(shield=True), anyio.move_on_after(_CLOSE_TIMEOUT):
                    await events.aclose()  # type: ignore[attr-defined]
            self._retire(live, outcome)

    async def _step(self, live: _LiveCall, awaitable: Awaitable[T]) -> T:
        """Await one step of an engine call in a scope the router can cancel.

        The scope never spans a ``yield``: an engine going down (or an abort)
        interrupts exactly the await that is waiting on it, whatever the
        engine is doing, and the caller's task is never cancelled by us.
        """
        with anyio.CancelScope() as scope:
            live.step = scope
            if live.failure is not None or live.aborted:
                scope.cancel()
            try:
                return await awaitable
            finally:
                live.step = None
        raise _Interrupted

    def _tg_start(self, func: Any, *args: Any) -> None:
        if self._tg is not None and not self._closing:
            self._tg.start_soon(func, *args)

    def _account(self, live: _LiveCall, event: TokenEvent) -> None:
        if event.timings is not None:
            live.model_time += event.timings.model_time
            live.queue_time += event.timings.queue_time
            retained = event.timings.kv_retained_s
            if retained is not None and live.call is not None:
                until = time.monotonic() + retained
                self.balancer.retained(live.call.program_id, live.engine.engine_id, until)
        if event.usage is not None:
            live.tokens += (
                event.usage.prompt_tokens
                - event.usage.cached_tokens
                + event.usage.completion_tokens
            )

    def _retire(self, live: _LiveCall, outcome: CallOutcome) -> None:
        """The call left: release its engine slot and charge its program (PLAS/ATLAS rule)."""
        now = time.monotonic()
        call_id = live.request.call_id
        self._calls.pop(call_id, None)
        live.engine.calls.pop(call_id, None)
        self.balancer.release(live.engine.engine_id)
        call = live.call
        if call is None:
            return
        if self.scheduler_config.unit == "tokens":
            call.service = float(live.tokens)
        else:  # engines that do not report model time: the call's time on the engine
            call.service = live.model_time or (now - live.dispatched)
        self.accounting.retire(call, now, wait=live.queue_time, outcome=outcome)

    async def abort(self, call_id: str) -> None:
        live = self._calls.get(call_id)
        if live is not None:
            live.interrupt(None)
            await live.engine.backend.abort(call_id)

    # -- programs ----------------------------------------------------------

    async def start_program(self, tag: ProgramTag) -> None:
        self.table.start(tag.program_id, time.monotonic())

    async def end_program(self, program_id: str) -> None:
        self.table.end(program_id, time.monotonic())
        await self._forget_program(program_id)

    async def _forget_program(self, program_id: str) -> None:
        """Tell the engines that saw the program that it is over (all at once, each bounded,
        so that a stalled engine holds up neither ``DELETE /v1/programs`` nor the others)."""
        async with anyio.create_task_group() as tg:
            for engine in self._engines.values():
                if program_id in engine.programs:
                    engine.programs.discard(program_id)
                    tg.start_soon(self._end_program_on, engine, program_id)

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        """A thread of ``program_id`` entered or left a tool: tell the engines that ran the
        program's calls (all at once, each bounded; a failure is logged, never raised, as the
        signal is advisory). Awaited, so each engine hears it before the program's next call."""
        if event.state == "start":
            self.balancer.hold_retained(program_id)
        engines = [
            e
            for e in self._engines.values()
            if e.up and program_id in e.programs and isinstance(e.backend, ToolSignals)
        ]
        async with anyio.create_task_group() as tg:
            for engine in engines:
                tg.start_soon(self._tool_event_on, engine, program_id, event)

    async def _tool_event_on(self, engine: _Engine, program_id: str, event: ToolEvent) -> None:
        backend = engine.backend
        assert isinstance(backend, ToolSignals)
        await self._notify(engine, "tool_event_failed", backend.tool_event(program_id, event))

    async def _end_program_on(self, engine: _Engine, program_id: str) -> None:
        await self._notify(engine, "end_program_failed", engine.backend.end_program(program_id))

    async def _notify(self, engine: _Engine, failed: str, notice: Awaitable[None]) -> None:
        """Await a best-effort notice to one engine within the health timeout; log a failure."""
        timeout = self.config.health_timeout_s
        try:
            with anyio.fail_after(timeout):
                await notice
        except TimeoutError:
            log.warning(failed, engine_id=engine.engine_id, error=f"no answer within {timeout:g}s")
        except Exception as e:
            log.warning(failed, engine_id=engine.engine_id, error=_describe(e))

    # -- introspection -----------------------------------------------------

    def engines(self) -> list[EngineStatus]:
        return [
            EngineStatus(
                engine_id=e.engine_id,
                up=e.up,
                reason=e.reason,
                live_calls=len(e.calls),
                restarts=e.restarts,
            )
            for e in self._engines.values()
        ]

    def stats(self) -> EngineStats:
        """The sum over live engines (ratios weighted by their KV pools).

        Raises :class:`EngineUnavailable` when no engine is up, so ``/health`` answers 503.
        """
        if not any(e.up for e in self._engines.values()):
            raise EngineUnavailable(f"no engine is available ({self._reasons()})")
        total = EngineStats()
        for engine in self._engines.values():
            if not engine.up:
                continue
            try:
                total = total.plus(engine.backend.stats())
            except EngineError:  # failed since its last health check, which will take it down
                continue
        return total

    def models(self) -> list[ModelInfo]:
        """The models the engines serve (or served before going down), each id once.

        A model whose engines are all down stays listed: its calls get a 503
        that says why, not a 404 as if it never existed.
        """
        seen: dict[str, ModelInfo] = {}
        for engine in self._engines.values():
            for model in engine.backend.models():
                seen.setdefault(model.id, model)
        return list(seen.values())

    def _reasons(self) -> str:
        return "; ".join(f"{e.engine_id}: {e.reason}" for e in self._engines.values())


def _describe(exc: BaseException) -> str:
    """A readable one-line reason, unwrapping exception groups."""
    while isinstance(exc, BaseExceptionGroup) and len(exc.exceptions) == 1:
        exc = exc.exceptions[0]
    return str(exc) or type(exc).__name__
