"""The OpenAI Agents SDK: tool runs reported through the SDK's run hooks.

The Agents SDK builds an ``openai.AsyncOpenAI`` (or takes one), so
``agentrt.instrument()`` is all its model calls need, on the chat completions
and on the responses model API. ``Runner.run(agent, input, hooks=AgentrtRunHooks())``
reports each tool run as a tool span of the program thread that runs it;
``@agentrt.tool`` above ``@function_tool`` times the tool's invocation.
Install with ``pip install agentrt[openai-agents]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from agents import FunctionTool, RunHooks

from agentrt.integrations import wrong_order
from agentrt.sdk.program import ToolSpan, start_tool_span


def _key(context: Any, tool: Any) -> Any:
    # One span per tool call: the call id where the SDK gives one (parallel calls of one
    # tool), else the tool itself.
    return getattr(context, "tool_call_id", None) or id(tool)


class AgentrtRunHooks(RunHooks[Any]):
    """Run hooks that report each tool run as a tool span of the current program thread."""

    def __init__(self) -> None:
        self._spans: dict[Any, ToolSpan] = {}

    async def on_tool_start(self, context: Any, agent: Any, tool: Any) -> None:
        span = start_tool_span()
        if span is not None:
            self._spans[_key(context, tool)] = span

    async def on_tool_end(self, context: Any, agent: Any, tool: Any, result: Any) -> None:
        span = self._spans.pop(_key(context, tool), None)
        if span is not None:
            span.end()


def wrap_tool(obj: Any, timed: Callable[[Any], Any]) -> Any:
    """``@agentrt.tool`` above ``@function_tool``: time the tool's invocation.

    The tool object is kept (the SDK's wrappers around the invocation, which
    copies of the tool rebind, stay as they are): the timed function is the
    one they call, or ``on_invoke_tool`` itself for a hand-made tool.
    """
    if isinstance(obj, FunctionTool):
        invoker = obj.on_invoke_tool
        inner = getattr(invoker, "_invoke_tool_impl", None)
        if inner is not None:
            invoker._invoke_tool_impl = timed(inner)  # type: ignore[attr-defined]
        else:
            obj.on_invoke_tool = timed(invoker)
        return obj
    if type(obj).__module__.startswith("agents."):
        raise wrong_order(
            "the Agents SDK", "@function_tool", f"the Agents SDK object {type(obj).__name__}"
        )
    return None
