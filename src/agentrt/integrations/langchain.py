"""LangChain / LangGraph: tool runs reported through LangChain's callbacks.

``ChatOpenAI`` builds an ``openai`` client, so ``agentrt.instrument()`` (or
``agentrt.instrument_client(llm.root_async_client)``) is all its calls need.
Pass :class:`AgentrtCallbackHandler` in ``config={"callbacks": [...]}`` (or to
the model or tools) to report tool runs as tool spans of the program thread
that runs them; ``@agentrt.tool`` on a LangChain ``@tool`` object times its
function. Install with ``pip install agentrt[langchain]``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any
from uuid import UUID

from langchain_core.callbacks import BaseCallbackHandler
from langchain_core.tools import BaseTool

from agentrt.integrations import wrong_order
from agentrt.sdk.program import ToolSpan, start_tool_span


class AgentrtCallbackHandler(BaseCallbackHandler):
    """Reports each LangChain tool run as a tool span of the current program thread."""

    # Run in the code that runs the tool (not in an executor), so that the span belongs
    # to the tool's program thread.
    run_inline = True

    def __init__(self) -> None:
        super().__init__()
        self._spans: dict[UUID, ToolSpan] = {}

    def on_tool_start(
        self, serialized: dict[str, Any], input_str: str, *, run_id: UUID, **kwargs: Any
    ) -> None:
        span = start_tool_span()
        if span is not None:
            self._spans[run_id] = span

    def on_tool_end(self, output: Any, *, run_id: UUID, **kwargs: Any) -> None:
        span = self._spans.pop(run_id, None)
        if span is not None:
            span.end()

    def on_tool_error(self, error: BaseException, *, run_id: UUID, **kwargs: Any) -> None:
        self.on_tool_end(None, run_id=run_id)


def wrap_tool(obj: Any, timed: Callable[[Any], Any]) -> Any:
    """``@agentrt.tool`` above LangChain's ``@tool``: time the function inside the tool."""
    if not isinstance(obj, BaseTool):
        return None
    func = getattr(obj, "func", None)
    coroutine = getattr(obj, "coroutine", None)
    if func is None and coroutine is None:
        raise wrong_order(
            "LangChain", "@tool", f"the LangChain tool {obj.name!r} ({type(obj).__name__})"
        )
    if func is not None:
        obj.func = timed(func)
    if coroutine is not None:
        obj.coroutine = timed(coroutine)
    return obj
