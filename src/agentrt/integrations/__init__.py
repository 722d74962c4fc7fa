"""Thin, optional adapters between agentrt and agent frameworks.

The frameworks need nothing from here to run on agentrt: ``agentrt.instrument()``
makes the openai clients they build carry programs, and a thread's interrupt
is measured between its calls whatever runs there. These adapters add what
only a framework knows, through the framework's own hooks:

- :mod:`agentrt.integrations.langchain`: a callback handler reporting tool
  runs (``pip install agentrt[langchain]``);
- :mod:`agentrt.integrations.openai_agents`: run hooks reporting tool runs of
  the OpenAI Agents SDK (``agentrt[openai-agents]``);
- :mod:`agentrt.integrations.pydantic_ai`: lets ``@agentrt.tool`` take a
  pydantic-ai ``Tool`` (``agentrt[pydantic-ai]``).

``@agentrt.tool`` composes with each framework's tool decorator in either
order: below it, the framework wraps an ordinary (timed) function; above it,
:func:`framework_tool` hands the framework's tool object to its adapter, which
times the function inside, or refuses it with a message saying which order
works. No framework is imported unless such an object is passed.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

# Top-level package of a tool object's class -> the adapter module that wraps it.
_ADAPTERS = {
    "langchain_core": "agentrt.integrations.langchain",
    "langchain": "agentrt.integrations.langchain",
    "agents": "agentrt.integrations.openai_agents",
    "pydantic_ai": "agentrt.integrations.pydantic_ai",
}


def framework_tool(obj: Any, timed: Callable[[Any], Any]) -> Any | None:
    """``obj`` with its function timed by ``timed`` if it is a framework's tool object, else None."""
    if callable(obj) and hasattr(obj, "__code__"):  # a plain function: the common case
        return None
    # The framework's classes, or user subclasses of them.
    roots = (cls.__module__.split(".", 1)[0] for cls in type(obj).__mro__)
    module_name = next((_ADAPTERS[r] for r in roots if r in _ADAPTERS), None)
    if module_name is None:
        return None
    import importlib

    adapter = importlib.import_module(module_name)
    result: Any = adapter.wrap_tool(obj, timed)
    return result


def wrong_order(framework: str, decorator: str, what: str) -> TypeError:
    """The error for a tool object ``@agentrt.tool`` cannot time from the outside."""
    return TypeError(
        f"@agentrt.tool cannot time {what} from outside: put @agentrt.tool below "
        f"{decorator} (on the function itself), so that {framework} wraps a timed function"
    )
