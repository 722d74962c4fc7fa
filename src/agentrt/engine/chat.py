"""OpenAI chat messages (+ tools, tool_choice) to prompt token ids, through the tokenizer's template.

Messages are checked first, so a bad request fails with an
:class:`~agentrt.protocol.engine.InvalidRequest` naming what is wrong rather
than with a template error deep in Jinja. Content given as a list of text
parts is joined into one string (what most templates expect); ``developer``
messages are treated as ``system`` ones.

Tools: when the template knows about tools (it mentions ``tools``), they are
passed to it as they are. Otherwise (SmolLM2's template, for one) the tools
are described in the system message and earlier tool calls are written into
the assistant turns, both in the ``<tool_call>{...}</tool_call>`` convention
of Hermes/Qwen-style models, so the model still sees them. ``tool_choice``:
``auto`` shows the tools; ``none`` shows them too (as OpenAI and vLLM do,
and as the server's tool-call parser assumes) with an instruction not to
call any; ``required`` and a named function add an instruction to call a
tool (only the named one is shown).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from agentrt.protocol.engine import InvalidRequest

ROLES = frozenset({"system", "developer", "user", "assistant", "tool"})


def encode_chat(
    tokenizer: Any,
    messages: Sequence[Any],
    tools: Sequence[Any] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
) -> list[int]:
    """Prompt token ids for ``messages`` with the generation prompt appended."""
    try:
        text = render_chat(tokenizer, messages, tools, tool_choice)
    except RecursionError:
        # A tool schema or call arguments nested deeper than json or Jinja can recurse.
        raise InvalidRequest("messages or tools are nested too deeply", param="messages") from None
    ids: list[int] = tokenizer.encode(text, add_special_tokens=False)
    return ids


def render_chat(
    tokenizer: Any,
    messages: Sequence[Any],
    tools: Sequence[Any] | None = None,
    tool_choice: str | dict[str, Any] | None = None,
) -> str:
    """The prompt text for ``messages`` (see :func:`encode_chat`)."""
    from jinja2 import TemplateError

    if getattr(tokenizer, "chat_template", None) is None:
        raise InvalidRequest(
            "this model has no chat template; use the completions API", param="messages"
        )
    checked = [normalise_message(m, i) for i, m in enumerate(_as_list(messages, "messages"))]
    if not checked:
        raise InvalidRequest("messages must not be empty", param="messages")
    shown, instruction = select_tools(tools, tool_choice)
    native = "tools" in str(tokenizer.chat_template)
    if not native:
        checked = [_tool_calls_as_text(m) for m in checked]
        if shown:
            instruction = tools_system_text(shown) + ("\n" + instruction if instruction else "")
    if instruction:
        checked = _with_system_text(checked, instruction)
    try:
        text: str = tokenizer.apply_chat_template(
            checked,
            tools=list(shown) if native and shown else None,
            add_generation_prompt=True,
            tokenize=False,
        )
    except TemplateError as e:
        raise InvalidRequest(
            f"the model's chat template rejected the messages: {e}", param="messages"
        ) from e
    return text


def _as_list(value: Any, param: str) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise InvalidRequest(f"{param} must be a list", param=param)
    return list(value)


def normalise_message(message: Any, index: int) -> dict[str, Any]:
    """Check one OpenAI message and bring it into the shape chat templates expect."""
    where = f"messages[{index}]"
    if not isinstance(message, dict):
        raise InvalidRequest(f"{where} must be an object", param=where)
    role = message.get("role")
    if role not in ROLES:
        raise InvalidRequest(
            f"{where}.role must be one of {', '.join(sorted(ROLES))}, got {role!r}",
            param=f"{where}.role",
        )
    out: dict[str, Any] = {"role": "system" if role == "developer" else role}
    content = content_text(message.get("content"), f"{where}.content")
    tool_calls = message.get("tool_calls")
    if role == "assistant" and tool_calls:
        out["tool_calls"] = [
            _normalise_tool_call(c, f"{where}.tool_calls[{j}]")
            for j, c in enumerate(_as_list(tool_calls, f"{where}.tool_calls"))
        ]
    elif content is None:
        raise InvalidRequest(
            f"{where}.content is required for role {role}", param=f"{where}.content"
        )
    out["content"] = content or ""
    if role == "tool":
        call_id = message.get("tool_call_id")
        if not isinstance(call_id, str) or not call_id:
            raise InvalidRequest(
                f"{where}.tool_call_id is required for role tool", param=f"{where}.tool_call_id"
            )
        out["tool_call_id"] = call_id
    name = message.get("name")
    if name is not None:
        if not isinstance(name, str):
            raise InvalidRequest(f"{where}.name must be a string", param=f"{where}.name")
        out["name"] = name
    return out


def content_text(content: Any, where: str) -> str | None:
    """A message's content as one string: a string, or the text parts of a list joined."""
    if content is None or isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = []
        for j, part in enumerate(content):
            if (
                not isinstance(part, dict)
                or part.get("type") != "text"
                or not isinstance(part.get("text"), str)
            ):
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidRequest(
                    f"{where}[{j}]: only text parts are supported, got {kind!r}",
                    param=f"{where}[{j}]",
                )
            texts.append(part["text"])
        return "".join(texts)
    raise InvalidRequest(f"{where} must be a string or a list of text parts", param=where)


def _normalise_tool_call(call: Any, where: str) -> dict[str, Any]:
    fn = call.get("function") if isinstance(call, dict) else None
    if not isinstance(fn, dict) or not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequest(f"{where}.function.name is required", param=f"{where}.function.name")
    args = fn.get("arguments", "{}")
    if isinstance(args, str):
        try:
            args = json.loads(args) if args.strip() else {}
        except json.JSONDecodeError as e:
            raise InvalidRequest(
                f"{where}.function.arguments is not valid JSON: {e}",
                param=f"{where}.function.arguments",
            ) from e
    if not isinstance(args, dict):
        raise InvalidRequest(
            f"{where}.function.arguments must be a JSON object", param=f"{where}.function.arguments"
        )
    out: dict[str, Any] = {"type": "function", "function": {"name": fn["name"], "arguments": args}}
    if isinstance(call.get("id"), str):
        out["id"] = call["id"]
    return out


def select_tools(
    tools: Sequence[Any] | None, tool_choice: str | dict[str, Any] | None
) -> tuple[list[dict[str, Any]], str]:
    """The tools to show the model and an instruction that ``tool_choice`` asks for."""
    checked = [_check_tool(t, i) for i, t in enumerate(_as_list(tools, "tools"))] if tools else []
    choice = tool_choice if tool_choice is not None else "auto"
    if not checked:
        if tool_choice is None or tool_choice == "none":
            return [], ""
        raise InvalidRequest("tool_choice needs tools", param="tool_choice")
    if choice == "none":
        return checked, "Do not call any tool; answer directly."
    if choice == "auto":
        return checked, ""
    if choice == "required":
        return checked, "You must call at least one of the tools."
    if isinstance(choice, dict) and choice.get("type") == "function":
        name = (choice.get("function") or {}).get("name")
        named = [t for t in checked if t["function"]["name"] == name]
        if not named:
            raise InvalidRequest(
                f"tool_choice names {name!r}, which is not among the tools", param="tool_choice"
            )
        return named, f"You must call the tool {name}."
    raise InvalidRequest(
        "tool_choice must be 'none', 'auto', 'required' or {'type': 'function', 'function': {'name': ...}}",
        param="tool_choice",
    )


def _check_tool(tool: Any, index: int) -> dict[str, Any]:
    where = f"tools[{index}]"
    fn = tool.get("function") if isinstance(tool, dict) else None
    if (
        not isinstance(tool, dict)
        or tool.get("type", "function") != "function"
        or not isinstance(fn, dict)
    ):
        raise InvalidRequest(
            f"{where} must be {{'type': 'function', 'function': {{...}}}}", param=where
        )
    if not isinstance(fn.get("name"), str) or not fn["name"]:
        raise InvalidRequest(f"{where}.function.name is required", param=f"{where}.function.name")
    params = fn.get("parameters", {})
    if not isinstance(params, dict):
        raise InvalidRequest(
            f"{where}.function.parameters must be a JSON schema object",
            param=f"{where}.function.parameters",
        )
    return {"type": "function", "function": {**fn, "parameters": params}}


def tools_system_text(tools: Sequence[dict[str, Any]]) -> str:
    """The tool descriptions for templates that cannot render tools themselves."""
    specs = "\n".join(json.dumps(t["function"], ensure_ascii=False) for t in tools)
    return (
        "You can call these tools:\n<tools>\n" + specs + "\n</tools>\n"
        "To call one, answer with "
        '<tool_call>{"name": <tool name>, "arguments": <JSON object>}</tool_call>.'
    )


def _tool_calls_as_text(message: dict[str, Any]) -> dict[str, Any]:
    calls = message.get("tool_calls")
    if not calls:
        return message
    text = "".join(
        "<tool_call>"
        + json.dumps(
            {"name": c["function"]["name"], "arguments": c["function"]["arguments"]},
            ensure_ascii=False,
        )
        + "</tool_call>"
        for c in calls
    )
    rest = {k: v for k, v in message.items() if k != "tool_calls"}
    rest["content"] = (message["content"] + "\n" if message["content"] else "") + text
    return rest


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages[0]["role"] == "system":
        first = dict(messages[0])
        first["content"] = (first["content"] + "\n\n" if first["content"] else "") + text
        return [first, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
