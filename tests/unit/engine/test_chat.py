"""Chat messages (+ tools, tool_choice) to prompt ids through the tokenizer's chat template."""

from __future__ import annotations

import copy
import json
from typing import Any

import pytest

from agentrt.engine.chat import encode_chat, render_chat
from agentrt.protocol.engine import InvalidRequest

WEATHER = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Current weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}
CLOCK = {"type": "function", "function": {"name": "get_time", "parameters": {}}}
USER = [{"role": "user", "content": "Weather in Paris?"}]

# A template that renders tools itself (as Qwen's and Llama 3's do).
NATIVE_TEMPLATE = (
    "{% if tools %}TOOLS={{ tools | map(attribute='function.name') | join(',') }}\n{% endif %}"
    "{% for m in messages %}<{{ m.role }}>{{ m.content }}"
    "{% for c in m.tool_calls or [] %}[call {{ c.function.name }} {{ c.function.arguments.city }}]{% endfor %}"
    "</{{ m.role }}>\n{% endfor %}"
    "{% if add_generation_prompt %}<assistant>{% endif %}"
)


@pytest.fixture
def native_tokenizer(smollm2_tokenizer: Any) -> Any:
    tok = copy.deepcopy(smollm2_tokenizer)
    tok.chat_template = NATIVE_TEMPLATE
    return tok


def test_prompt_ends_with_the_generation_prompt(smollm2_tokenizer: Any) -> None:
    ids = encode_chat(smollm2_tokenizer, [{"role": "user", "content": "Hi"}])
    text = smollm2_tokenizer.decode(ids)
    assert text == render_chat(smollm2_tokenizer, [{"role": "user", "content": "Hi"}])
    assert text.endswith("<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n")
    assert ids.count(smollm2_tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


def test_text_parts_are_joined_and_developer_is_system(smollm2_tokenizer: Any) -> None:
    text = render_chat(
        smollm2_tokenizer,
        [
            {"role": "developer", "content": "Be brief."},
            {
                "role": "user",
                "content": [{"type": "text", "text": "Hel"}, {"type": "text", "text": "lo"}],
            },
        ],
    )
    assert text.startswith("<|im_start|>system\nBe brief.<|im_end|>")
    assert "<|im_start|>user\nHello<|im_end|>" in text


def test_tools_reach_a_template_that_cannot_render_them(smollm2_tokenizer: Any) -> None:
    text = render_chat(smollm2_tokenizer, USER, tools=[WEATHER])
    assert text.startswith("<|im_start|>system\nYou can call these tools:")
    assert json.dumps(WEATHER["function"]) in text
    assert "<tool_call>" in text


def test_earlier_tool_calls_and_results_are_rendered(smollm2_tokenizer: Any) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_weather", "arguments": '{"city": "Paris"}'},
                }
            ],
        },
        {"role": "tool", "tool_call_id": "call_1", "content": "sunny"},
    ]
    text = render_chat(smollm2_tokenizer, messages, tools=[WEATHER])
    call = '<tool_call>{"name": "get_weather", "arguments": {"city": "Paris"}}</tool_call>'
    assert f"<|im_start|>assistant\n{call}<|im_end|>" in text
    assert "<|im_start|>tool\nsunny<|im_end|>" in text


def test_tool_choice_none_shows_the_tools_but_asks_for_no_call(smollm2_tokenizer: Any) -> None:
    text = render_chat(smollm2_tokenizer, USER, [WEATHER], "none")
    assert "get_weather" in text
    assert "Do not call any tool; answer directly." in text
    assert render_chat(smollm2_tokenizer, USER, None, "none") == render_chat(
        smollm2_tokenizer, USER
    )


def test_tool_choice_required_and_named(smollm2_tokenizer: Any) -> None:
    required = render_chat(smollm2_tokenizer, USER, [WEATHER, CLOCK], "required")
    assert "You must call at least one of the tools." in required
    assert "get_time" in required
    named = render_chat(
        smollm2_tokenizer,
        USER,
        [WEATHER, CLOCK],
        {"type": "function", "function": {"name": "get_time"}},
    )
    assert "You must call the tool get_time." in named
    assert "get_weather" not in named


def test_instruction_joins_an_existing_system_message(smollm2_tokenizer: Any) -> None:
    messages = [{"role": "system", "content": "You are terse."}, *USER]
    text = render_chat(smollm2_tokenizer, messages, [WEATHER], "required")
    assert text.startswith("<|im_start|>system\nYou are terse.\n\nYou can call these tools:")
    assert text.count("<|im_start|>system") == 1


def test_native_templates_get_the_tools_themselves(native_tokenizer: Any) -> None:
    messages = [
        *USER,
        {
            "role": "assistant",
            "content": "",
            "tool_calls": [{"function": {"name": "get_weather", "arguments": '{"city": "Oslo"}'}}],
        },
    ]
    text = render_chat(native_tokenizer, messages, [WEATHER, CLOCK])
    assert text.startswith("TOOLS=get_weather,get_time\n")
    assert "[call get_weather Oslo]" in text  # arguments arrive as an object, not a string
    assert "You can call these tools" not in text
    assert text.endswith("<assistant>")


@pytest.mark.parametrize(
    ("messages", "param"),
    [
        ("hello", "messages"),
        ([], "messages"),
        (["hello"], "messages[0]"),
        ([{"content": "x"}], "messages[0].role"),
        ([{"role": "wizard", "content": "x"}], "messages[0].role"),
        ([{"role": "user"}], "messages[0].content"),
        ([{"role": "user", "content": 42}], "messages[0].content"),
        (
            [{"role": "user", "content": [{"type": "image_url", "image_url": {"url": "x"}}]}],
            "messages[0].content[0]",
        ),
        ([{"role": "tool", "content": "r"}], "messages[0].tool_call_id"),
        (
            [
                {
                    "role": "assistant",
                    "tool_calls": [{"function": {"name": "f", "arguments": "{not json"}}],
                }
            ],
            "messages[0].tool_calls[0].function.arguments",
        ),
        (
            [{"role": "assistant", "tool_calls": [{"function": {"arguments": "{}"}}]}],
            "messages[0].tool_calls[0].function.name",
        ),
    ],
)
def test_bad_messages_are_invalid_requests(
    smollm2_tokenizer: Any, messages: Any, param: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        encode_chat(smollm2_tokenizer, messages)
    assert err.value.param == param
    assert err.value.status == 400


@pytest.mark.parametrize(
    ("tools", "tool_choice", "param"),
    [
        (None, "required", "tool_choice"),
        ([WEATHER], {"type": "function", "function": {"name": "nope"}}, "tool_choice"),
        ([WEATHER], "sometimes", "tool_choice"),
        ([{"type": "retrieval"}], None, "tools[0]"),
        ([{"type": "function", "function": {"description": "x"}}], None, "tools[0].function.name"),
        ("get_weather", None, "tools"),
    ],
)
def test_bad_tools_are_invalid_requests(
    smollm2_tokenizer: Any, tools: Any, tool_choice: Any, param: str
) -> None:
    with pytest.raises(InvalidRequest) as err:
        encode_chat(smollm2_tokenizer, USER, tools, tool_choice)
    assert err.value.param == param


def test_template_errors_become_invalid_requests(native_tokenizer: Any) -> None:
    native_tokenizer.chat_template = "{{ raise_exception('roles must alternate') }}"
    with pytest.raises(InvalidRequest, match="roles must alternate"):
        encode_chat(native_tokenizer, USER)


def test_a_model_without_a_template_refuses_chat(native_tokenizer: Any) -> None:
    native_tokenizer.chat_template = None
    with pytest.raises(InvalidRequest, match="no chat template"):
        encode_chat(native_tokenizer, USER)
