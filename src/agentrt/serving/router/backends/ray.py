"""Engine replicas as Ray actors (``agentrt serve --ray-address ADDR``), for fleets beyond one machine.

Each :class:`RayBackend` places one :class:`EngineActor` on the cluster
(with the CPUs/GPUs it asks for), builds the engine there from an
:class:`EngineSpec`, and streams each call's token events back through a
Ray streaming generator. The router is the same as for local replicas: an
actor that dies (node lost, ``ray.kill``, OOM) fails its in-flight calls
with :class:`EngineUnavailable` and is replaced with a fresh actor.

Messages cross Ray as msgpack bytes of the worker-process structs
(:mod:`~agentrt.serving.router.backends.wire`), so an engine error keeps its type.
Needs the ``ray`` extra and the asyncio event loop (Ray's).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack
from typing import Any

import anyio
import msgspec
import ray
from anyio.abc import TaskStatus
from ray.exceptions import RayError

from agentrt.log import get_logger
from agentrt.protocol.engine import (
    EngineClient,
    EngineStats,
    GenerationRequest,
    ModelInfo,
    ProgramTag,
    TokenEvent,
    ToolSignals,
)
from agentrt.protocol.programs import ToolEvent
from agentrt.serving.router.backends.errors import EngineLost, engine_error, error_info
from agentrt.serving.router.backends.hosting import EngineSpec, hosted_engine
from agentrt.serving.router.backends.wire import Event, Failed

log = get_logger("agentrt.serving.ray")
_encode = msgspec.msgpack.encode
_item_decoder = msgspec.msgpack.Decoder(Event | Failed)


class RayPlacement(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """What each engine actor asks the cluster for (TOML table ``[ray]``)."""

    address: str | None = None  # "auto", "ray://head:10001", or None for a local instance
    namespace: str = "agentrt"
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    resources: dict[str, float] = msgspec.field(default_factory=dict)
    start_timeout_s: float = 600.0  # building the engine (loading weights) on the actor


class EngineActor:
    """Hosts one engine inside a Ray async actor; every method runs on the actor's event loop."""

    def __init__(self, spec: bytes) -> None:
        self._spec = msgspec.msgpack.decode(spec, type=EngineSpec)
        self._stack = AsyncExitStack()
        self._engine: EngineClient | None = None
        self._stopped: anyio.Event | None = None

    async def start(self) -> bytes:
        self._stopped = anyio.Event()  # made on the actor's event loop, not in __init__
        self._engine = await self._stack.enter_async_context(hosted_engine(self._spec))
        return _encode(self._engine.models())

    def _live(self) -> EngineClient:
        if self._engine is None:
            raise RuntimeError("engine actor not started")
        return self._engine

    async def generate(self, request: bytes) -> AsyncIterator[bytes]:
        req = msgspec.msgpack.decode(request, type=GenerationRequest)
        events = self._live().generate(req)
        try:
            async for event in events:
                yield _encode(Event(event=event))
        except Exception as e:
            yield _encode(Failed(call_id=req.call_id, error=error_info(e)))
        finally:
            await events.aclose()  # type: ignore[attr-defined]

    async def abort(self, call_id: str) -> None:
        await self._live().abort(call_id)

    async def ping(self) -> bytes:
        return _encode(self._live().stats())

    async def start_program(self, tag: bytes) -> None:
        await self._live().start_program(msgspec.msgpack.decode(tag, type=ProgramTag))

    async def end_program(self, program_id: str) -> None:
        await self._live().end_program(program_id)

    async def tool_event(self, program_id: str, event: bytes) -> None:
        engine = self._live()
        if isinstance(engine, ToolSignals):
            await engine.tool_event(program_id, msgspec.msgpack.decode(event, type=ToolEvent))

    async def wait_stopped(self) -> None:
        """Pending until :meth:`stop`; the caller learns of the actor's death when it fails."""
        if self._stopped is not None:
            await self._stopped.wait()

    async def stop(self) -> None:
        self._engine = None
        await self._stack.aclose()
        if self._stopped is not None:
            self._stopped.set()


def connect(placement: RayPlacement) -> None:
    """Join the cluster once per process (blocking: call it from a worker thread)."""
    if not ray.is_initialized():
        ray.init(address=placement.address, namespace=placement.namespace, log_to_driver=False)


class RayBackend:
    """One engine replica in a Ray actor; an :class:`EngineClient` for the router."""

    program_aware = True

    def __init__(
        self, engine_id: str, engine: EngineSpec, placement: RayPlacement | None = None
    ) -> None:
        self.engine_id = engine_id
        self.spec = engine
        self.placement = placement or RayPlacement()
        self._actor: Any = None
        self._down_reason = "not started"
        self._models: list[ModelInfo] = []
        self._stats = EngineStats()
        self._run_scope: anyio.CancelScope | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        p = self.placement
        await anyio.to_thread.run_sync(connect, p)
        actor_class: Any = ray.remote(EngineActor)
        actor: Any = actor_class.options(
            num_cpus=p.num_cpus,
            num_gpus=p.num_gpus,
            resources=p.resources or None,
            max_concurrency=10_000,  # calls of one engine run concurrently on the actor's loop
            max_restarts=0,  # the router replaces a lost actor
        ).remote(_encode(self.spec))
        with anyio.CancelScope() as self._run_scope:
            try:
                with anyio.fail_after(p.start_timeout_s):
                    models = await actor.start.remote()
                self._models = msgspec.msgpack.decode(models, type=list[ModelInfo])
                self._actor = actor
                self._down_reason = ""
                log.info("ray_replica_up", engine_id=self.engine_id)
                task_status.started()
                await actor.wait_stopped.remote()
                raise EngineLost(f"ray actor of {self.engine_id} stopped")
            except RayError as e:
                raise EngineLost(
                    f"ray actor of {self.engine_id} lost: {type(e).__name__}: {e}"
                ) from None
            finally:
                self._actor = None
                self._down_reason = "actor stopped"
                with anyio.CancelScope(shield=True):
                    await _stop_actor(actor)

    async def close(self) -> None:
        if self._run_scope is not None:
            self._run_scope.cancel()

    def _live(self) -> Any:
        if self._actor is None:
            raise EngineLost(f"engine {self.engine_id} is unavailable: {self._down_reason}")
        return self._actor

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        actor = self._live()
        stream = actor.generate.options(num_returns="streaming").remote(_encode(request))
        finished = False
        try:
            async for ref in stream:
                item = _item_decoder.decode(await ref)
                if isinstance(item, Failed):
                    finished = True
                    raise engine_error(item.error)
                yield item.event
            finished = True
        except RayError as e:
            finished = True
            raise EngineLost(
                f"engine {self.engine_id} is unavailable: {type(e).__name__}"
            ) from None
        finally:
            if not finished:  # the caller left early: stop the actor's generator (aborts the call)
                ray.cancel(stream)

    async def abort(self, call_id: str) -> None:
        if self._actor is not None:
            await _quietly(self._actor.abort.remote(call_id))

    async def check_health(self) -> None:
        try:
            self._stats = msgspec.msgpack.decode(await self._live().ping.remote(), type=EngineStats)
        except RayError as e:
            raise EngineLost(
                f"engine {self.engine_id} is unavailable: {type(e).__name__}"
            ) from None

    def stats(self) -> EngineStats:
        return self._stats

    def models(self) -> list[ModelInfo]:
        return list(self._models)

    async def start_program(self, tag: ProgramTag) -> None:
        try:
            await self._live().start_program.remote(_encode(tag))
        except RayError as e:
            raise EngineLost(
                f"engine {self.engine_id} is unavailable: {type(e).__name__}"
            ) from None

    async def end_program(self, program_id: str) -> None:
        if self._actor is not None:
            await _quietly(self._actor.end_program.remote(program_id))

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        """A tool signal for the actor's engine (a lost actor is the health check's to report)."""
        if self._actor is not None:
            await _quietly(self._actor.tool_event.remote(program_id, _encode(event)))


async def _quietly(ref: Any) -> None:
    with contextlib.suppress(
        RayError
    ):  # the actor is gone; run() or the health check tells the router
        await ref


async def _stop_actor(actor: Any) -> None:
    """Close the engine cleanly if the actor still answers, then make sure it is gone."""
    with anyio.move_on_after(5.0):
        await _quietly(actor.stop.remote())
    ray.kill(actor, no_restart=True)
