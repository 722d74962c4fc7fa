"""pydantic-ai: ``@agentrt.tool`` on a ``pydantic_ai.Tool``.

pydantic-ai's OpenAI models take (or build) an ``openai.AsyncOpenAI``, so
``agentrt.instrument()`` is all their calls need. ``agentrt.tool(Tool(f))``
times the tool's function. ``@agent.tool`` / ``@agent.tool_plain`` register
the function they are given and return it unchanged, so ``@agentrt.tool``
goes below them (on the function itself). Install with
``pip install agentrt[pydantic-ai]``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from pydantic_ai import Tool


def wrap_tool(obj: Any, timed: Callable[[Any], Any]) -> Any:
    """``agentrt.tool(Tool(f))``: time the function the tool calls."""
    if not isinstance(obj, Tool):
        return None
    function = timed(obj.function)
    obj.function = function
    obj.function_schema = dataclasses.replace(obj.function_schema, function=function)
    return obj
