"""Validate an OpenAI request body and turn it into the engine's :class:`GenerationRequest`.

Everything a client can get wrong is caught here, before the engine sees the
call, and answered with a 400 that names the parameter. Limits that protect
the server (``max_tokens``, ``n``) come from :class:`ServerConfig`; the
bounds of every numeric field from :mod:`agentrt.protocol.limits`.
"""

from __future__ import annotations

from typing import Any

from agentrt.protocol.engine import GenerationRequest, ProgramTag, SamplingParams
from agentrt.protocol.limits import (
    SAMPLING_BOUNDS,
    Violation,
    priority_violation,
    sampling_violation,
    token_ids_violation,
)
from agentrt.protocol.openai import (
    ChatCompletionRequest,
    CompletionRequest,
    NamedToolChoice,
    SamplingFields,
    ToolChoice,
    ToolDefinition,
    chat_message_dict,
)
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.errors import APIError, bad_request

DEFAULT_COMPLETION_MAX_TOKENS = 16  # OpenAI's default for /v1/completions


def sampling_params(
    body: SamplingFields,
    config: ServerConfig,
    *,
    max_tokens: int | None,
    logprobs: bool,
    top_logprobs: int,
) -> SamplingParams:
    """The engine's sampling parameters, after checking every value against its bound.

    The server's own limits (``max_tokens_limit``, ``max_n``) come first, then
    the bounds every engine shares (:mod:`agentrt.protocol.limits`).
    """
    if max_tokens is not None and not 1 <= max_tokens <= config.max_tokens_limit:
        raise bad_request(
            f"max_tokens must be between 1 and {config.max_tokens_limit}, got {max_tokens}",
            param="max_tokens",
        )
    n = body.n if body.n is not None else 1
    if not 1 <= n <= config.max_n:
        raise bad_request(f"n must be between 1 and {config.max_n}, got {n}", param="n")
    stop = [body.stop] if isinstance(body.stop, str) else list(body.stop or [])
    if any(not s for s in stop):
        raise bad_request("stop strings must not be empty", param="stop")
    params: dict[str, Any] = {
        "max_tokens": max_tokens,
        "n": n,
        "stop": stop,
        "stop_token_ids": list(body.stop_token_ids or []),
        "seed": body.seed,
        "presence_penalty": body.presence_penalty or 0.0,
        "frequency_penalty": body.frequency_penalty or 0.0,
        "ignore_eos": bool(body.ignore_eos),
        "logprobs": logprobs,
        "top_logprobs": top_logprobs,
        "logit_bias": dict(body.logit_bias or {}),
    }
    optional = {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": None if body.top_k == 0 else body.top_k,  # vLLM: 0 also disables
        "min_p": body.min_p,
        "repetition_penalty": body.repetition_penalty,
    }
    params.update({k: v for k, v in optional.items() if v is not None})
    sampling = SamplingParams(**params)
    _refuse(sampling_violation(sampling))
    _refuse(priority_violation(body.priority))
    return sampling


def _refuse(violation: Violation | None) -> None:
    if violation is not None:
        raise bad_request(violation.message, param=violation.param)


def offered_tools(
    tools: list[ToolDefinition], choice: ToolChoice | None
) -> tuple[list[dict[str, Any]] | None, set[str]]:
    """The tools to show the chat template, and the names whose calls the output may contain.

    ``tool_choice="none"`` keeps the tools in the prompt (as OpenAI and vLLM
    do) but no call is parsed; a named choice offers only that function.
    """
    if choice is not None and choice != "none" and not tools:
        raise bad_request("tool_choice needs tools", param="tool_choice")
    names = [t.function.name for t in tools]
    if len(set(names)) != len(names):
        raise bad_request("tool names must be unique", param="tools")
    as_dicts: list[dict[str, Any]] = [
        {
            "type": "function",
            "function": {k: v for k, v in _function_dict(t.function).items() if v is not None},
        }
        for t in tools
    ]
    if isinstance(choice, NamedToolChoice):
        if choice.function.name not in names:
            raise bad_request(
                f"tool_choice names {choice.function.name!r}, which is not in tools",
                param="tool_choice",
            )
        as_dicts = [d for d in as_dicts if d["function"]["name"] == choice.function.name]
        return as_dicts, {choice.function.name}
    if not tools:
        return None, set()
    return as_dicts, set() if choice == "none" else set(names)


def _function_dict(function: Any) -> dict[str, Any]:
    return {
        "name": function.name,
        "description": function.description,
        "parameters": function.parameters,
    }


def chat_request(
    body: ChatCompletionRequest,
    config: ServerConfig,
    *,
    call_id: str,
    program: ProgramTag | None,
    arrival: float,
) -> tuple[GenerationRequest, set[str]]:
    """The engine request for a chat body, and the tool names whose calls to parse from the output."""
    if not body.messages:
        raise bad_request("messages must not be empty", param="messages")
    if body.top_logprobs is not None and not body.logprobs:
        raise bad_request("top_logprobs needs logprobs=true", param="top_logprobs")
    tools, tool_names = offered_tools(body.tools or [], body.tool_choice)
    max_tokens = (
        body.max_completion_tokens if body.max_completion_tokens is not None else body.max_tokens
    )
    sampling = sampling_params(
        body,
        config,
        max_tokens=max_tokens,
        logprobs=bool(body.logprobs),
        top_logprobs=body.top_logprobs or 0,
    )
    request = GenerationRequest(
        call_id=call_id,
        model=body.model,
        messages=[chat_message_dict(m) for m in body.messages],
        tools=tools,
        sampling=sampling,
        program=program,
        priority=body.priority,
        arrival_time=arrival,
    )
    return request, tool_names


def completion_requests(
    body: CompletionRequest,
    config: ServerConfig,
    *,
    call_id: str,
    program: ProgramTag | None,
    arrival: float,
) -> list[GenerationRequest]:
    """One engine request per prompt of the body (a batch of prompts is several calls).

    The number of prompts, and of prompts times ``n``, is bounded by the
    server's config: each prompt is an engine call, built on the event loop.
    """
    prompts = split_prompts(body.prompt, config.max_prompts_per_request)
    if body.suffix:
        raise bad_request("suffix is not supported", param="suffix")
    if body.echo and any(isinstance(p, list) for p in prompts):
        raise bad_request("echo needs text prompts", param="echo")
    max_tokens = body.max_tokens if body.max_tokens is not None else DEFAULT_COMPLETION_MAX_TOKENS
    top = body.logprobs if body.logprobs is not None else 0
    if not SAMPLING_BOUNDS["top_logprobs"].admits(top):
        bound = SAMPLING_BOUNDS["top_logprobs"].describe()
        raise bad_request(f"logprobs must be in {bound}, got {top}", param="logprobs")
    sampling = sampling_params(
        body, config, max_tokens=max_tokens, logprobs=body.logprobs is not None, top_logprobs=top
    )
    if len(prompts) * sampling.n > config.max_choices_per_request:
        raise bad_request(
            f"{len(prompts)} prompts x n={sampling.n} is more than the "
            f"{config.max_choices_per_request} choices one request may ask for",
            param="n",
        )
    return [
        GenerationRequest(
            call_id=call_id if len(prompts) == 1 else f"{call_id}-{i}",
            model=body.model,
            prompt=prompt,
            sampling=sampling,
            program=program,
            priority=body.priority,
            arrival_time=arrival,
        )
        for i, prompt in enumerate(prompts)
    ]


def split_prompts(
    prompt: str | list[str | int | list[int]], max_prompts: int
) -> list[str | list[int]]:
    """The prompts of a body: a text, texts, token ids, or lists of token ids (not mixed)."""
    if isinstance(prompt, str):
        return [prompt]
    if not prompt:
        raise bad_request("prompt must not be empty", param="prompt")
    if all(isinstance(p, int) for p in prompt):
        ids = [p for p in prompt if isinstance(p, int)]
        _refuse(token_ids_violation(ids, "prompt"))
        return [ids]
    if len(prompt) > max_prompts:
        raise bad_request(
            f"at most {max_prompts} prompts per request, got {len(prompt)}", param="prompt"
        )
    if len({type(p) for p in prompt}) > 1:
        raise bad_request("prompt mixes texts, token ids and lists of token ids", param="prompt")
    out: list[str | list[int]] = []
    for p in prompt:
        if isinstance(p, list) and not p:
            raise bad_request("a token-id prompt must not be empty", param="prompt")
        if isinstance(p, list):
            _refuse(token_ids_violation(p, "prompt"))
        if not isinstance(p, int):
            out.append(p)
    return out


def check_model(model: str, served: set[str]) -> None:
    if model not in served:
        raise APIError(
            404,
            f"The model `{model}` does not exist. Served models: {', '.join(sorted(served))}.",
            type="not_found_error",
            param="model",
            code="model_not_found",
        )
