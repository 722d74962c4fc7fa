"""A streamed reply that ends without a finish reason is an error, not a short answer."""

from __future__ import annotations

import httpx
import pytest
from tests.unit.sdk.recording import chat_chunks

import agentrt
from agentrt.agents.llm import LLM, IncompleteReply


def sse_server(finish: bool) -> httpx.MockTransport:
    """A chat endpoint that streams one word, with its finish chunk and [DONE] only if ``finish``."""
    body = chat_chunks(["Par"], finish=finish)
    return httpx.MockTransport(
        lambda request: httpx.Response(
            200, headers={"content-type": "text/event-stream"}, content=body
        )
    )


def llm(finish: bool) -> LLM:
    client = agentrt.OpenAI(
        base_url="http://test/v1",
        api_key="x",
        http_client=httpx.Client(transport=sse_server(finish)),
    )
    return LLM(model="m", client=client)


def test_a_finished_stream_is_a_reply() -> None:
    model = llm(finish=True)
    reply = model.chat([{"role": "user", "content": "capital of France?"}], max_tokens=4)
    assert reply.text == "Par" and reply.finish_reason == "stop"
    assert model.trace.calls[0].error is None


def test_a_stream_cut_before_its_finish_reason_is_an_error() -> None:
    model = llm(finish=False)
    with pytest.raises(IncompleteReply):
        model.chat([{"role": "user", "content": "capital of France?"}], max_tokens=4)
    assert "without a finish reason" in (model.trace.calls[0].error or "")
