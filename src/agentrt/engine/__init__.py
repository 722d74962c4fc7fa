"""The embedded inference engine: continuous batching over a paged KV cache,
driven by the program-aware scheduler of :mod:`agentrt.scheduling`.

Public API: :class:`AsyncEngine` (the :class:`~agentrt.protocol.engine.EngineClient`
the server uses), :class:`LLMEngine` (the synchronous core, for offline use
and benchmarks) and :class:`EngineConfig`. Importing this package does not
import torch; the classes load on first use.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from agentrt.engine.async_engine import AsyncEngine
    from agentrt.engine.config import EngineConfig
    from agentrt.engine.llm_engine import LLMEngine

__all__ = ["AsyncEngine", "EngineConfig", "LLMEngine"]

_WHERE = {
    "AsyncEngine": "agentrt.engine.async_engine",
    "EngineConfig": "agentrt.engine.config",
    "LLMEngine": "agentrt.engine.llm_engine",
}


def __getattr__(name: str) -> Any:
    if name in _WHERE:
        import importlib

        return getattr(importlib.import_module(_WHERE[name]), name)
    raise AttributeError(f"module 'agentrt.engine' has no attribute {name!r}")
