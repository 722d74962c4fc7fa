"""The OpenAI wire format as msgspec Structs: requests, responses, stream chunks, errors.

Bodies are decoded once at the edge with the typed decoders at the bottom of
this module; the server works with these objects, never with dicts. Unknown
fields are ignored (msgspec's default), as OpenAI's own API tolerates them, so
clients that send newer parameters keep working. vLLM's extra sampling fields
(``top_k``, ``min_p``, ``repetition_penalty``, ``ignore_eos``,
``stop_token_ids``, ``priority``) are accepted in the body like vLLM does.
"""

from __future__ import annotations

from typing import Any, Literal

import msgspec

# --------------------------------------------------------------------------- requests


class TextPart(msgspec.Struct, kw_only=True):
    """One part of a multi-part message content; only text parts carry text here."""

    type: str = "text"
    text: str | None = None


class FunctionCall(msgspec.Struct, kw_only=True):
    name: str
    arguments: str  # a JSON document, as a string (OpenAI's convention)


class ToolCall(msgspec.Struct, kw_only=True):
    id: str
    function: FunctionCall
    type: Literal["function"] = "function"


class ChatMessage(msgspec.Struct, kw_only=True, omit_defaults=True):
    """A message of the conversation: system, developer, user, assistant or tool."""

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None
    tool_calls: list[ToolCall] | None = None
    tool_call_id: str | None = None


class FunctionDefinition(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str
    description: str | None = None
    parameters: dict[str, Any] | None = None
    strict: bool | None = None


class ToolDefinition(msgspec.Struct, kw_only=True):
    function: FunctionDefinition
    type: Literal["function"] = "function"


class NamedFunction(msgspec.Struct, kw_only=True):
    name: str


class NamedToolChoice(msgspec.Struct, kw_only=True):
    function: NamedFunction
    type: Literal["function"] = "function"


ToolChoice = Literal["none", "auto", "required"] | NamedToolChoice


class StreamOptions(msgspec.Struct, kw_only=True):
    include_usage: bool | None = None  # null or absent: no usage chunk


class SamplingFields(msgspec.Struct, kw_only=True):
    """Parameters every generation endpoint shares, OpenAI's and vLLM's extras.

    Like OpenAI's API, ``null`` means "the default" for every optional field
    (clients built on other SDKs send nulls for unset values).
    """

    model: str
    stream: bool | None = False
    stream_options: StreamOptions | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    n: int | None = 1
    stop: str | list[str] | None = None
    seed: int | None = None
    presence_penalty: float | None = 0.0
    frequency_penalty: float | None = 0.0
    logit_bias: dict[int, float] | None = None  # JSON keys are token ids written as strings
    user: str | None = None
    # vLLM's extras, read from the body like vLLM does.
    top_k: int | None = None
    min_p: float | None = None
    repetition_penalty: float | None = None
    ignore_eos: bool | None = False
    stop_token_ids: list[int] | None = None
    priority: int | None = None


class ChatCompletionRequest(SamplingFields, kw_only=True):
    messages: list[ChatMessage]
    max_completion_tokens: int | None = None
    tools: list[ToolDefinition] | None = None
    tool_choice: ToolChoice | None = None
    parallel_tool_calls: bool | None = True
    logprobs: bool | None = False
    top_logprobs: int | None = None


class CompletionRequest(SamplingFields, kw_only=True):
    # A text, a batch of texts, a list of token ids, or a batch of those
    # (one list type, as msgspec needs; the server checks the items are not mixed).
    prompt: str | list[str | int | list[int]]
    logprobs: int | None = None  # the completions API's "top n" logprobs
    echo: bool | None = False
    suffix: str | None = None


# --------------------------------------------------------------------------- responses


class PromptTokensDetails(msgspec.Struct, kw_only=True):
    cached_tokens: int = 0


class UsageInfo(msgspec.Struct, kw_only=True):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    prompt_tokens_details: PromptTokensDetails | None = None


class TopLogprobEntry(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None


class ChatLogprobEntry(msgspec.Struct, kw_only=True):
    token: str
    logprob: float
    bytes: list[int] | None = None
    top_logprobs: list[TopLogprobEntry] = []


class ChatLogprobs(msgspec.Struct, kw_only=True):
    content: list[ChatLogprobEntry] | None = None


class CompletionLogprobs(msgspec.Struct, kw_only=True):
    tokens: list[str] = []
    token_logprobs: list[float | None] = []
    top_logprobs: list[dict[str, float] | None] = []
    text_offset: list[int] = []


class AgentrtInfo(msgspec.Struct, kw_only=True, omit_defaults=True):
    """agentrt's extension field on responses: which call this was and how long it took.

    Times are seconds; OpenAI clients keep unknown fields, so
    ``response.model_extra["agentrt"]`` (or ``response.agentrt``) reads it.
    """

    call_id: str
    program_id: str | None = None
    queue_time: float = 0.0
    time_to_first_token: float | None = None
    e2e_latency: float | None = None
    model_time: float = 0.0
    preemptions: int = 0


class ResponseMessage(msgspec.Struct, kw_only=True):
    role: Literal["assistant"] = "assistant"
    content: str | None = None
    tool_calls: list[ToolCall] | None = None


class ChatChoice(msgspec.Struct, kw_only=True):
    index: int
    message: ResponseMessage
    finish_reason: str | None
    logprobs: ChatLogprobs | None = None
    stop_reason: str | int | None = None  # vLLM's field: the stop string or token that ended it


class ChatCompletion(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[ChatChoice]
    usage: UsageInfo
    object: Literal["chat.completion"] = "chat.completion"
    agentrt: AgentrtInfo | None = None


class ToolCallFunctionDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    name: str | None = None
    arguments: str | None = None


class ToolCallDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    index: int
    id: str | None = None
    type: Literal["function"] | None = None
    function: ToolCallFunctionDelta | None = None


class ChatDelta(msgspec.Struct, kw_only=True, omit_defaults=True):
    role: Literal["assistant"] | None = None
    content: str | None = None
    tool_calls: list[ToolCallDelta] | None = None


class ChatChunkChoice(msgspec.Struct, kw_only=True):
    index: int
    delta: ChatDelta
    finish_reason: str | None = None
    logprobs: ChatLogprobs | None = None


class ChatCompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[ChatChunkChoice]
    object: Literal["chat.completion.chunk"] = "chat.completion.chunk"
    # Present (null) on every chunk when usage was asked for, set on the last one.
    usage: UsageInfo | msgspec.UnsetType | None = msgspec.UNSET
    agentrt: AgentrtInfo | msgspec.UnsetType = msgspec.UNSET


class CompletionChoice(msgspec.Struct, kw_only=True):
    index: int
    text: str
    finish_reason: str | None
    logprobs: CompletionLogprobs | None = None
    stop_reason: str | int | None = None


class Completion(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: UsageInfo
    object: Literal["text_completion"] = "text_completion"
    agentrt: AgentrtInfo | None = None


class CompletionChunk(msgspec.Struct, kw_only=True):
    id: str
    created: int
    model: str
    choices: list[CompletionChoice]
    object: Literal["text_completion"] = "text_completion"
    usage: UsageInfo | msgspec.UnsetType | None = msgspec.UNSET
    agentrt: AgentrtInfo | msgspec.UnsetType = msgspec.UNSET


class Model(msgspec.Struct, kw_only=True):
    id: str
    created: int
    owned_by: str
    max_model_len: int
    object: Literal["model"] = "model"


class ModelList(msgspec.Struct, kw_only=True):
    data: list[Model]
    object: Literal["list"] = "list"


class ErrorDetail(msgspec.Struct, kw_only=True):
    message: str
    type: str
    param: str | None = None
    code: str | None = None


class ErrorBody(msgspec.Struct, kw_only=True):
    """``{"error": {"message", "type", "param", "code"}}``: every error the server returns."""

    error: ErrorDetail


# --------------------------------------------------------------------------- codecs

chat_request_decoder = msgspec.json.Decoder(ChatCompletionRequest)
completion_request_decoder = msgspec.json.Decoder(CompletionRequest)
encoder = msgspec.json.Encoder()


def message_text(content: str | list[TextPart] | None) -> str:
    """The text of a message's content (multi-part contents are joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text or "" for part in content if part.type == "text")


def chat_message_dict(message: ChatMessage) -> dict[str, Any]:
    """A message as the chat template expects it (plain text content, tool calls with parsed arguments)."""
    out: dict[str, Any] = {"role": message.role, "content": message_text(message.content)}
    if message.name is not None:
        out["name"] = message.name
    if message.tool_call_id is not None:
        out["tool_call_id"] = message.tool_call_id
    if message.tool_calls:
        out["tool_calls"] = [
            {
                "id": call.id,
                "type": "function",
                "function": {
                    "name": call.function.name,
                    "arguments": _json_or_text(call.function.arguments),
                },
            }
            for call in message.tool_calls
        ]
    return out


def _json_or_text(arguments: str) -> Any:
    # Chat templates (Hermes, SmolLM2, Llama 3) render arguments as a JSON object.
    # RecursionError: JSON nested deeper than the decoder's stack allows is no JSON to us either.
    try:
        return msgspec.json.decode(arguments)
    except (msgspec.DecodeError, RecursionError):
        return arguments
