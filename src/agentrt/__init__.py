"""agentrt: serve LLM agent programs, not single requests.

The public SDK surface lives here::

    import agentrt

    client = agentrt.OpenAI(base_url=..., api_key=...)   # openai.OpenAI, plus program headers

    @agentrt.program
    def research(question): ...

    @agentrt.tool
    def search(query): ...

Heavy parts are imported only when used: the openai clients on first access
to ``agentrt.OpenAI``, the server only from ``agentrt.serving``. ``import
agentrt`` itself loads neither openai, torch nor starlette.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from agentrt.sdk.context import ProgramContext, current_program, propagation_headers
from agentrt.sdk.http import (
    AsyncProgramHeadersTransport,
    ProgramHeadersTransport,
    add_program_headers,
    add_program_headers_async,
)
from agentrt.sdk.instrument import instrument, instrument_client, uninstrument
from agentrt.sdk.program import ProgramScope, parallel, program, tool

if TYPE_CHECKING:
    from agentrt.sdk.asgi import ProgramContextMiddleware
    from agentrt.sdk.openai_clients import AsyncOpenAI, OpenAI

__version__ = "0.1.0"

# name -> module; resolved on first attribute access (PEP 562).
_LAZY: dict[str, str] = {
    "OpenAI": "agentrt.sdk.openai_clients",
    "AsyncOpenAI": "agentrt.sdk.openai_clients",
    "ProgramContextMiddleware": "agentrt.sdk.asgi",
    "serve_in_process": "agentrt.serving.inprocess",
}

__all__ = [
    "AsyncOpenAI",
    "AsyncProgramHeadersTransport",
    "OpenAI",
    "ProgramContext",
    "ProgramContextMiddleware",
    "ProgramHeadersTransport",
    "ProgramScope",
    "add_program_headers",
    "add_program_headers_async",
    "current_program",
    "instrument",
    "instrument_client",
    "parallel",
    "program",
    "propagation_headers",
    "serve_in_process",
    "tool",
    "uninstrument",
]


def __getattr__(name: str) -> Any:
    module_name = _LAZY.get(name)
    if module_name is None:
        raise AttributeError(f"module 'agentrt' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
