"""OpenAI's Responses API (``POST /v1/responses``) as msgspec Structs: the request, its input
items, the ``response`` object and the streamed events.

The request shares the sampling fields (and vLLM's extras) of the other
generation endpoints. Input items of every kind decode into one
:class:`InputItem` whose ``type`` says which fields matter (a message may
omit its ``type``, as OpenAI's clients send it), so a malformed item is a
400 that names it rather than a decode error about a union.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

from agentrt.protocol.openai import AgentrtInfo, ErrorDetail, SamplingFields

# --------------------------------------------------------------------------- request


class ContentPart(msgspec.Struct, kw_only=True):
    """A part of a message's content, or of a tool's output; only text parts carry text here."""

    type: str
    text: str | None = None


class InputItem(msgspec.Struct, kw_only=True):
    """One input item: a ``message``, a ``function_call`` the model made, or its ``function_call_output``."""

    type: str = "message"
    id: str | None = None
    status: str | None = None
    # message
    role: Literal["user", "assistant", "system", "developer"] | None = None
    content: str | list[ContentPart] | None = None
    # function_call and function_call_output
    call_id: str | None = None
    name: str | None = None
    arguments: str | None = None
    output: str | list[ContentPart] | None = None


class FunctionTool(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A tool the model may call; only ``type="function"`` is served (the server runs no tools)."""

    type: str
    name: str | None = None
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class NamedFunctionChoice(msgspec.Struct, kw_only=True):
    name: str
    type: Literal["function"] = "function"


ResponsesToolChoice = Literal["none", "auto", "required"] | NamedFunctionChoice


class ResponsesRequest(SamplingFields, kw_only=True):
    input: str | list[InputItem]
    instructions: str | None = None
    max_output_tokens: int | None = None
    tools: list[FunctionTool] | None = None
    tool_choice: ResponsesToolChoice | None = None
    parallel_tool_calls: bool | None = True
    previous_response_id: str | None = None
    store: bool | None = True
    metadata: dict[str, str] | None = None
    top_logprobs: int | None = None
    conversation: str | dict[str, str] | None = None


responses_request_decoder = msgspec.json.Decoder(ResponsesRequest)

# --------------------------------------------------------------------------- response


class OutputText(msgspec.Struct, kw_only=True):
    text: str
    type: Literal["output_text"] = "output_text"
    annotations: list[Any] = []
    logprobs: list[Any] = []


class OutputMessage(msgspec.Struct, kw_only=True):
    id: str
    status: Literal["in_progress", "completed", "incomplete"]
    content: list[OutputText]
    type: Literal["message"] = "message"
    role: Literal["assistant"] = "assistant"


class FunctionCallItem(msgspec.Struct, kw_only=True):
    id: str
    call_id: str
    name: str
    arguments: str
    status: Literal["in_progress", "completed"]
    type: Literal["function_call"] = "function_call"


OutputItem = OutputMessage | FunctionCallItem


class InputTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class OutputTokensDetails(msgspec.Struct, kw_only=True):
    reasoning_tokens: int = 0


class ResponseUsage(msgspec.Struct, kw_only=True):
    input_tokens: int
    output_tokens: int
    total_tokens: int
    input_tokens_details: InputTokensDetails
    output_tokens_details: OutputTokensDetails = msgspec.field(default_factory=OutputTokensDetails)


class IncompleteDetails(msgspec.Struct, kw_only=True):
    reason: Literal["max_output_tokens", "content_filter"]


class TextFormat(msgspec.Struct, kw_only=True):
    type: Literal["text"] = "text"


class TextConfig(msgspec.Struct, kw_only=True):
    format: TextFormat = msgspec.field(default_factory=TextFormat)


ResponseStatus = Literal["in_progress", "completed", "incomplete", "cancelled"]


class Response(msgspec.Struct, kw_only=True):
    id: str
    created_at: int
    model: str
    status: ResponseStatus
    output: list[OutputItem]
    instructions: str | None
    max_output_tokens: int | None
    previous_response_id: str | None
    temperature: float | None
    top_p: float | None
    tools: list[FunctionTool]
    tool_choice: ResponsesToolChoice
    parallel_tool_calls: bool
    store: bool
    metadata: dict[str, str]
    usage: ResponseUsage | None
    incomplete_details: IncompleteDetails | None = None
    error: None = None
    object: Literal["response"] = "response"
    text: TextConfig = msgspec.field(default_factory=TextConfig)
    truncation: Literal["disabled"] = "disabled"
    agentrt: AgentrtInfo | None = None


# --------------------------------------------------------------------------- stream events


class StreamEvent(msgspec.Struct, kw_only=True):
    """One server-sent event; ``type`` names it and says which of the other fields it carries."""

    type: str
    sequence_number: int
    response: Response | msgspec.UnsetType = msgspec.UNSET
    output_index: int | msgspec.UnsetType = msgspec.UNSET
    item: OutputItem | msgspec.UnsetType = msgspec.UNSET
    item_id: str | msgspec.UnsetType = msgspec.UNSET
    content_index: int | msgspec.UnsetType = msgspec.UNSET
    part: OutputText | msgspec.UnsetType = msgspec.UNSET
    delta: str | msgspec.UnsetType = msgspec.UNSET
    text: str | msgspec.UnsetType = msgspec.UNSET
    name: str | msgspec.UnsetType = msgspec.UNSET
    arguments: str | msgspec.UnsetType = msgspec.UNSET
    logprobs: list[Any] | msgspec.UnsetType = msgspec.UNSET


class StreamError(msgspec.Struct, kw_only=True):
    """The Responses API's ``error`` event; ``error`` repeats it in the shape on which OpenAI's
    clients raise, as they do for the other endpoints' stream errors."""

    message: str
    code: str | None
    param: str | None
    sequence_number: int
    error: ErrorDetail
    type: Literal["error"] = "error"
