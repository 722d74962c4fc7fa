"""``/v1/responses`` rendered: one engine call's events as a ``response`` object or as the
Responses API's stream of events.

The stream opens with ``response.created`` and ``response.in_progress``;
the text goes out as one ``message`` output item (``output_item.added``,
``content_part.added``, ``output_text.delta``..., then the ``.done``
events), the tool calls parsed from it as ``function_call`` items after it,
and ``response.completed`` (or ``response.incomplete`` when
``max_output_tokens`` cut it) carries the whole response with its usage.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from agentrt.protocol.engine import TokenEvent
from agentrt.protocol.openai import ToolCall
from agentrt.protocol.responses import (
    FunctionCallItem,
    IncompleteDetails,
    InputTokensDetails,
    OutputItem,
    OutputMessage,
    OutputText,
    Response,
    ResponsesRequest,
    ResponseStatus,
    ResponseUsage,
    StreamError,
    StreamEvent,
)
from agentrt.serving.http.errors import APIError
from agentrt.serving.http.render import EVENTS, Renderer, Reply
from agentrt.serving.http.response_params import output_message
from agentrt.serving.http.toolcalls import ToolCallStream, parse_tool_calls

STATUS: dict[str | None, ResponseStatus] = {
    "stop": "completed",
    "length": "incomplete",
    "abort": "cancelled",
}


class ResponsesRenderer(Renderer):
    """The answer to a Responses request; with ``tool_names``, tool calls are parsed out of the text."""

    sse = EVENTS

    def __init__(
        self, reply: Reply, body: ResponsesRequest, tool_names: set[str], stored: bool
    ) -> None:
        self.reply = reply
        self.request = body
        self.tool_names = tool_names
        self.stored = stored  # kept for previous_response_id (the handler sets it once it knows)
        self._text: list[str] = []
        self._finish: str | None = None
        self._calls: list[ToolCall] = []
        self._content: str | None = None
        self._sequence = 0
        self._stream: ToolCallStream | None = ToolCallStream(tool_names) if tool_names else None
        self._message_open = False

    @property
    def message_id(self) -> str:
        return "msg_" + self.reply.response_id.removeprefix("resp_")

    # ------------------------------------------------------------------ one JSON body

    def add(self, call: int, event: TokenEvent) -> None:
        self._text.append(event.text)
        if event.finish_reason is not None:
            self._finish = event.finish_reason
            text = "".join(self._text)
            if self.tool_names and text:
                self._content, self._calls = parse_tool_calls(text, self.tool_names)
            else:
                self._content = text

    def body(self) -> Response:
        return self._response(self._status(), self._output())

    def output_message(self) -> dict[str, Any]:
        """The answer as the assistant message a later call's conversation continues from."""
        return output_message(self._content, self._calls)

    # ------------------------------------------------------------------ SSE events

    def chunks(self, call: int, event: TokenEvent) -> list[msgspec.Struct]:
        out: list[msgspec.Struct] = []
        if self._sequence == 0:
            opening = self._response("in_progress", [])
            out += [
                self._event("response.created", response=opening),
                self._event("response.in_progress", response=opening),
            ]
        text = self._stream.feed(event.text) if self._stream else event.text
        out += self._delta(text)
        if event.finish_reason is not None:
            self._finish = event.finish_reason
            if self._stream is not None:
                tail, self._calls = self._stream.finish()
                out += self._delta(tail)
            streamed = "".join(self._text)
            self._content = streamed if streamed or not self._calls else None
            out += self._close_message()
            out += self._call_events()
        return out

    def closing(self) -> list[msgspec.Struct]:
        status = self._status()
        kind = "response.completed" if status == "completed" else f"response.{status}"
        return [self._event(kind, response=self._response(status, self._output()))]

    def stream_error(self, error: APIError) -> msgspec.Struct:
        detail = error.body().error
        self._sequence += 1
        return StreamError(
            message=detail.message,
            code=detail.code or detail.type,
            param=detail.param,
            sequence_number=self._sequence - 1,
            error=detail,
        )

    def _delta(self, text: str) -> list[msgspec.Struct]:
        if not text:
            return []
        self._text.append(text)
        out = [] if self._message_open else self._open_message()
        out.append(
            self._event(
                "response.output_text.delta",
                item_id=self.message_id,
                output_index=0,
                content_index=0,
                delta=text,
                logprobs=[],
            )
        )
        return out

    def _open_message(self) -> list[msgspec.Struct]:
        self._message_open = True
        empty = OutputMessage(id=self.message_id, status="in_progress", content=[])
        return [
            self._event("response.output_item.added", output_index=0, item=empty),
            self._event(
                "response.content_part.added",
                item_id=self.message_id,
                output_index=0,
                content_index=0,
                part=OutputText(text=""),
            ),
        ]

    def _close_message(self) -> list[msgspec.Struct]:
        if self._content is None:
            return []
        out = [] if self._message_open else self._open_message()
        text, where = self._content, {"item_id": self.message_id, "output_index": 0}
        return [
            *out,
            self._event("response.output_text.done", **where, content_index=0, text=text, logprobs=[]),
            self._event("response.content_part.done", **where, content_index=0, part=OutputText(text=text)),
            self._event("response.output_item.done", output_index=0, item=self._message()),
        ]  # fmt: skip

    def _call_events(self) -> list[msgspec.Struct]:
        out: list[msgspec.Struct] = []
        first = 0 if self._content is None else 1
        for index, call in enumerate(self._calls, start=first):
            done = _function_call(call)
            item_id = done.id
            opened = FunctionCallItem(
                id=item_id, call_id=call.id, name=done.name, arguments="", status="in_progress"
            )
            out += [
                self._event("response.output_item.added", output_index=index, item=opened),
                self._event(
                    "response.function_call_arguments.delta",
                    item_id=item_id,
                    output_index=index,
                    delta=done.arguments,
                ),
                self._event(
                    "response.function_call_arguments.done",
                    item_id=item_id,
                    output_index=index,
                    name=done.name,
                    arguments=done.arguments,
                ),
                self._event("response.output_item.done", output_index=index, item=done),
            ]
        return out

    # ------------------------------------------------------------------ the response object

    def _status(self) -> ResponseStatus:
        return STATUS.get(self._finish, "completed")

    def _message(self) -> OutputMessage:
        status: Literal["completed", "incomplete"] = (
            "incomplete" if self._status() == "incomplete" else "completed"
        )
        return OutputMessage(
            id=self.message_id, status=status, content=[OutputText(text=self._content or "")]
        )

    def _output(self) -> list[OutputItem]:
        items: list[OutputItem] = [] if self._content is None else [self._message()]
        return items + [_function_call(call) for call in self._calls]

    def _response(self, status: ResponseStatus, output: list[OutputItem]) -> Response:
        body, reply = self.request, self.reply
        final = status != "in_progress"
        return Response(
            id=reply.response_id,
            created_at=reply.created,
            model=reply.model,
            status=status,
            output=output,
            instructions=body.instructions,
            max_output_tokens=body.max_output_tokens,
            previous_response_id=body.previous_response_id,
            temperature=body.temperature,
            top_p=body.top_p,
            tools=list(body.tools or []),
            tool_choice=body.tool_choice or "auto",
            parallel_tool_calls=body.parallel_tool_calls is not False,
            store=self.stored,
            metadata=dict(body.metadata or {}),
            usage=self._usage() if final else None,
            incomplete_details=IncompleteDetails(reason="max_output_tokens")
            if status == "incomplete"
            else None,
            agentrt=reply.trackers[0].info(reply.program_id) if final else None,
        )

    def _usage(self) -> ResponseUsage:
        usage = self.reply.usage()
        details = usage.prompt_tokens_details
        return ResponseUsage(
            input_tokens=usage.prompt_tokens,
            output_tokens=usage.completion_tokens,
            total_tokens=usage.total_tokens,
            input_tokens_details=InputTokensDetails(
                cached_tokens=details.cached_tokens if details else 0
            ),
        )

    def _event(self, kind: str, **fields: Any) -> StreamEvent:
        self._sequence += 1
        return StreamEvent(type=kind, sequence_number=self._sequence - 1, **fields)


def _function_call(call: ToolCall) -> FunctionCallItem:
    return FunctionCallItem(
        id="fc_" + call.id.removeprefix("call_"),
        call_id=call.id,
        name=call.function.name,
        arguments=call.function.arguments,
        status="completed",
    )
