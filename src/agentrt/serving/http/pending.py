"""The placeholder engine the app serves with (503) until its lifespan has built the real one."""

from __future__ import annotations

from collections.abc import AsyncIterator

from agentrt.protocol.engine import (
    EngineStats,
    EngineUnavailable,
    GenerationRequest,
    ModelInfo,
    ProgramTag,
    TokenEvent,
)


class NotStarted:
    """Stands in for an engine that the lifespan has not built yet: every use is a 503."""

    def _fail(self) -> EngineUnavailable:
        return EngineUnavailable("the engine is starting")

    async def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        raise self._fail()
        yield  # pragma: no cover - makes this an async generator

    async def abort(self, call_id: str) -> None:
        return None

    def stats(self) -> EngineStats:
        raise self._fail()

    def models(self) -> list[ModelInfo]:
        return []

    async def start_program(self, tag: ProgramTag) -> None:
        raise self._fail()

    async def end_program(self, program_id: str) -> None:
        raise self._fail()

    async def close(self) -> None:
        return None
