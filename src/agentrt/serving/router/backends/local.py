"""An engine living in the router's own process, as a backend.

The default single-engine server and the in-process tests route through the
same router as replicas and remote servers do; this adapter gives such an
engine the backend lifecycle (``run``, ``check_health``) without a process
or network hop.
"""

from __future__ import annotations

from collections.abc import AsyncIterator

import anyio
from anyio.abc import TaskStatus

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
from agentrt.serving.router.backends.errors import EngineLost
from agentrt.serving.router.backends.hosting import running


class LocalBackend:
    """Wraps an in-process :class:`EngineClient`; ``run`` starts it and closes it on shutdown."""

    program_aware = True

    def __init__(self, engine_id: str, engine: EngineClient, *, program_aware: bool = True) -> None:
        self.engine_id = engine_id
        self.engine = engine
        self.program_aware = program_aware
        self._up = False
        self._run_scope: anyio.CancelScope | None = None

    async def run(self, *, task_status: TaskStatus[None] = anyio.TASK_STATUS_IGNORED) -> None:
        with anyio.CancelScope() as self._run_scope:
            async with running(self.engine):
                self._up = True
                try:
                    task_status.started()
                    await anyio.sleep_forever()
                finally:
                    self._up = False

    async def close(self) -> None:
        if self._run_scope is not None:
            self._run_scope.cancel()

    def _live(self) -> EngineClient:
        if not self._up:
            raise EngineLost(f"engine {self.engine_id} is not running")
        return self.engine

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        # The engine's own stream, not a wrapper around it: one generator frame less per token.
        return self._live().generate(request)

    async def abort(self, call_id: str) -> None:
        if self._up:
            await self.engine.abort(call_id)

    async def check_health(self) -> None:
        self._live().stats()

    def stats(self) -> EngineStats:
        return self.engine.stats()

    def models(self) -> list[ModelInfo]:
        return self.engine.models()

    async def start_program(self, tag: ProgramTag) -> None:
        await self._live().start_program(tag)

    async def end_program(self, program_id: str) -> None:
        if self._up:
            await self.engine.end_program(program_id)

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        """Passed on to an engine that listens for tool signals; others never hear them."""
        if self._up and isinstance(self.engine, ToolSignals):
            await self.engine.tool_event(program_id, event)
