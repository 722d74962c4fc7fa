"""Build an engine from a description, in whatever process or actor will run it.

Worker processes and Ray actors cannot be handed a live engine object: they
are handed an :class:`EngineSpec` (an import path and keyword options) and
build the engine where it runs. The same spec names the embedded
``AsyncEngine`` in production and a deterministic echo engine in tests.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import msgspec

from agentrt.protocol.engine import EngineClient


class EngineSpec(msgspec.Struct, kw_only=True, frozen=True):
    """How to build an engine elsewhere: ``factory`` is ``"package.module:callable"``.

    The callable is called with ``options`` as keyword arguments and returns
    an :class:`EngineClient` (or an awaitable of one).
    """

    factory: str
    options: dict[str, Any] = msgspec.field(default_factory=dict)


def resolve_factory(path: str) -> Any:
    """Import ``"package.module:attr.attr"`` and return the object it names."""
    module_name, sep, attr_path = path.partition(":")
    if not sep or not module_name or not attr_path:
        raise ValueError(f"engine factory {path!r} must look like 'package.module:callable'")
    obj: Any = importlib.import_module(module_name)
    for part in attr_path.split("."):
        obj = getattr(obj, part)
    if not callable(obj):
        raise TypeError(f"engine factory {path!r} is not callable")
    return obj


async def build_engine(spec: EngineSpec) -> EngineClient:
    """Call the spec's factory and check that it produced an :class:`EngineClient`."""
    engine = resolve_factory(spec.factory)(**spec.options)
    if inspect.isawaitable(engine):
        engine = await engine
    if not isinstance(engine, EngineClient):
        raise TypeError(f"{spec.factory} returned {type(engine).__name__}, not an EngineClient")
    return engine


@asynccontextmanager
async def running(engine: EngineClient) -> AsyncIterator[EngineClient]:
    """Run ``engine`` for the duration of the block: enter it if it is an async context manager, close it after."""
    enter = getattr(engine, "__aenter__", None)
    if enter is not None:
        async with engine:  # type: ignore[attr-defined]
            yield engine
        return
    try:
        yield engine
    finally:
        await engine.close()


@asynccontextmanager
async def hosted_engine(spec: EngineSpec) -> AsyncIterator[EngineClient]:
    """Build the engine ``spec`` describes and run it for the duration of the block."""
    engine = await build_engine(spec)
    async with running(engine) as live:
        yield live
