"""/v1/responses over the real embedded engine: a tiny random Llama with SmolLM2's tokenizer and chat
template, so the items go through the template, the engine and the prefix cache.

Greedy decoding makes the streamed and the whole answer the same tokens; a call that continues a
stored response finds its predecessor's prompt in the prefix cache.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.unit.engine.conftest import smollm2_gguf, smollm2_tokenizer, tiny_folder  # noqa: F401
from tests.unit.serving.inprocess_clients import sync_client

from agentrt.engine import AsyncEngine, EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.loader import load_model
from agentrt.serving.config import ServerConfig
from agentrt.serving.http.app import create_app
from agentrt.serving.inprocess import AppRunner

BLOCK = 4
GREEDY: dict[str, Any] = {"temperature": 0.0, "max_output_tokens": 6}
NO_EOS = {"ignore_eos": True}


@pytest.fixture
def app(tiny_folder: Path) -> Iterator[Any]:  # noqa: F811
    config = EngineConfig(dtype="float32", num_kv_blocks=512, block_size=BLOCK)
    engine = AsyncEngine(LLMEngine(config, load_model(tiny_folder)))
    app = create_app(engine, ServerConfig(log_requests=False))
    yield app
    AppRunner.for_app(app).close()


def test_whole_and_streamed_answers_are_the_same_greedy_tokens(app: Any) -> None:
    client = sync_client(app)
    model = client.models.list().data[0].id
    items = [
        {"role": "user", "content": [{"type": "input_text", "text": "What is the capital?"}]},
        {"type": "function_call", "call_id": "call_1", "name": "lookup", "arguments": "{}"},
        {"type": "function_call_output", "call_id": "call_1", "output": "Paris"},
    ]
    tools = [{"type": "function", "name": "lookup", "parameters": {"type": "object"}}]
    ask: dict[str, Any] = {"model": model, "input": items, "tools": tools, "extra_body": NO_EOS}
    whole = client.responses.create(instructions="Be brief.", **ask, **GREEDY)
    events = list(client.responses.create(instructions="Be brief.", stream=True, **ask, **GREEDY))
    streamed = "".join(e.delta for e in events if e.type == "response.output_text.delta")
    final = events[-1].response
    assert whole.status == final.status == "incomplete"  # six tokens, no end of sequence
    assert whole.incomplete_details.reason == "max_output_tokens"
    assert whole.usage.output_tokens == final.usage.output_tokens == 6
    assert streamed == final.output_text == whole.output_text
    assert whole.usage.input_tokens == final.usage.input_tokens > 20  # template and tool rendered


def test_a_continued_response_finds_its_predecessor_in_the_prefix_cache(app: Any) -> None:
    client = sync_client(app)
    model = client.models.list().data[0].id
    first = client.responses.create(
        model=model, input="Tell me a story.", extra_body=NO_EOS, **GREEDY
    )
    second = client.responses.create(
        model=model,
        input="Another one.",
        previous_response_id=first.id,
        extra_body=NO_EOS,
        **GREEDY,
    )
    assert second.previous_response_id == first.id
    assert second.usage.input_tokens > first.usage.input_tokens + first.usage.output_tokens
    # The first call's prompt and answer (all but the last token, whose KV was never written),
    # in full blocks, are the start of the second's prompt: its greedy answer re-tokenizes as
    # the same tokens.
    cached = second.usage.input_tokens_details.cached_tokens
    written = first.usage.input_tokens + first.usage.output_tokens - 1
    assert cached >= written // BLOCK * BLOCK > first.usage.input_tokens
