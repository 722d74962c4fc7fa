"""A ``/v1/responses`` body as the engine's chat call: input items to chat messages, tools, sampling.

The Responses API's items map onto chat messages the way the chat
templates expect them: a ``function_call`` item joins the assistant message
before it as one of its ``tool_calls``, a ``function_call_output`` is a
``tool`` message, ``instructions`` is a system message ahead of everything
(not kept for the next call, as in OpenAI's API). With
``previous_response_id``, the stored conversation comes before the new
input (:mod:`.response_store`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from agentrt.protocol.engine import GenerationRequest, ProgramTag
from agentrt.protocol.openai import (
    ChatMessage,
    FunctionCall,
    FunctionDefinition,
    NamedFunction,
    NamedToolChoice,
    ToolCall,
    ToolChoice,
    ToolDefinition,
    chat_message_dict,
)
from agentrt.protocol.responses import ContentPart, InputItem, NamedFunctionChoice, ResponsesRequest
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.errors import bad_request
from agentrt.serving.http.params import offered_tools, sampling_params
from agentrt.serving.http.response_store import Conversation, ResponseStore

TEXT_PARTS = frozenset({"input_text", "output_text", "text"})


@dataclass
class ResponsesCall:
    """The engine call of a Responses request, and what its answer needs besides the events."""

    request: GenerationRequest
    tool_names: set[str]  # the tools whose calls to parse out of the output
    conversation: Conversation  # the stored prefix and this call's input, without instructions


def responses_call(
    body: ResponsesRequest,
    config: ServerConfig,
    store: ResponseStore,
    *,
    tenant: str,
    call_id: str,
    program: ProgramTag | None,
    arrival: float,
) -> ResponsesCall:
    """The engine request for a Responses body; every field the endpoint does not serve is a 400."""
    _refuse_unserved(body, config)
    history = _history(body, store, tenant)
    conversation = history + tuple(chat_message_dict(m) for m in input_messages(body.input))
    if not conversation:
        raise bad_request("input must not be empty", param="input")
    tools, tool_names = offered_tools(_chat_tools(body), _chat_tool_choice(body))
    sampling = sampling_params(
        body, config, max_tokens=body.max_output_tokens, logprobs=False, top_logprobs=0
    )
    system = [{"role": "system", "content": body.instructions}] if body.instructions else []
    request = GenerationRequest(
        call_id=call_id,
        model=body.model,
        messages=[*system, *conversation],
        tools=tools,
        sampling=sampling,
        program=program,
        priority=body.priority,
        arrival_time=arrival,
    )
    return ResponsesCall(request, tool_names, conversation)


def _refuse_unserved(body: ResponsesRequest, config: ServerConfig) -> None:
    if body.conversation is not None:
        raise bad_request(
            "conversation is not supported; continue a response with previous_response_id",
            param="conversation",
        )
    if body.n not in (None, 1):
        raise bad_request("a response has one output; n must be 1", param="n")
    if body.max_tokens is not None:
        raise bad_request("use max_output_tokens on /v1/responses", param="max_tokens")
    if body.top_logprobs:
        raise bad_request("top_logprobs is not supported on /v1/responses", param="top_logprobs")
    limit, wanted = config.max_tokens_limit, body.max_output_tokens
    if wanted is not None and not 1 <= wanted <= limit:
        raise bad_request(
            f"max_output_tokens must be between 1 and {limit}, got {wanted}",
            param="max_output_tokens",
        )


def _history(body: ResponsesRequest, store: ResponseStore, tenant: str) -> Conversation:
    previous = body.previous_response_id
    if previous is None:
        return ()
    if not store.enabled:
        raise bad_request(
            "previous_response_id needs stored responses, and this server stores none "
            "(responses_store_size is 0)",
            param="previous_response_id",
            code="response_store_disabled",
        )
    conversation = store.get(tenant, previous)
    if conversation is None:
        raise bad_request(
            f"previous response {previous!r} is not stored: it was made with store=false, "
            f"was dropped (the server keeps each tenant's last {store.max_per_tenant}), "
            "or never existed",
            param="previous_response_id",
            code="previous_response_not_found",
        )
    return conversation


def input_messages(items: str | list[InputItem]) -> list[ChatMessage]:
    """The chat messages of the input items, in order."""
    if isinstance(items, str):
        return [ChatMessage(role="user", content=items)]
    out: list[ChatMessage] = []
    names: dict[str, str] = {}  # call id -> function name, for the tool messages
    for i, item in enumerate(items):
        where = f"input[{i}]"
        if item.type == "message":
            if item.role is None or item.content is None:
                raise bad_request(f"{where}: a message needs a role and content", param="input")
            out.append(ChatMessage(role=item.role, content=_text(item.content, where)))
        elif item.type == "function_call":
            if item.call_id is None or item.name is None or item.arguments is None:
                raise bad_request(
                    f"{where}: a function_call needs call_id, name and arguments", param="input"
                )
            names[item.call_id] = item.name
            call = ToolCall(
                id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments)
            )
            last = out[-1] if out else None
            if last is not None and last.role == "assistant":
                last.tool_calls = [*(last.tool_calls or []), call]
            else:
                out.append(ChatMessage(role="assistant", content="", tool_calls=[call]))
        elif item.type == "function_call_output":
            if item.call_id is None or item.output is None:
                raise bad_request(
                    f"{where}: a function_call_output needs call_id and output", param="input"
                )
            out.append(
                ChatMessage(
                    role="tool",
                    content=_text(item.output, where),
                    tool_call_id=item.call_id,
                    name=names.get(item.call_id),
                )
            )
        else:
            raise bad_request(
                f"{where}: items of type {item.type!r} are not supported "
                "(message, function_call, function_call_output are)",
                param="input",
            )
    return out


def _text(content: str | list[ContentPart], where: str) -> str:
    if isinstance(content, str):
        return content
    for part in content:
        if part.type not in TEXT_PARTS or part.text is None:
            raise bad_request(
                f"{where}: only text content is supported, got a part of type {part.type!r}",
                param="input",
            )
    return "".join(part.text or "" for part in content)


def _chat_tools(body: ResponsesRequest) -> list[ToolDefinition]:
    out: list[ToolDefinition] = []
    for i, tool in enumerate(body.tools or []):
        if tool.type != "function":
            raise bad_request(
                f"tools[{i}]: only function tools are served, got {tool.type!r}", param="tools"
            )
        if not tool.name:
            raise bad_request(f"tools[{i}]: a function tool needs a name", param="tools")
        out.append(
            ToolDefinition(
                function=FunctionDefinition(
                    name=tool.name,
                    description=tool.description,
                    parameters=tool.parameters,
                    strict=tool.strict,
                )
            )
        )
    return out


def _chat_tool_choice(body: ResponsesRequest) -> ToolChoice | None:
    choice = body.tool_choice
    if isinstance(choice, NamedFunctionChoice):
        return NamedToolChoice(function=NamedFunction(name=choice.name))
    return choice


def output_message(content: str | None, calls: list[ToolCall]) -> dict[str, Any]:
    """The answer as the assistant message the next call's conversation holds."""
    return chat_message_dict(
        ChatMessage(role="assistant", content=content or "", tool_calls=calls or None)
    )
