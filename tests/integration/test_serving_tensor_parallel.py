"""``/v1/completions`` streamed from the embedded engine over 2 gloo processes (tensor parallel or 2 stages).

The tiny model has no tokenizer: token-id prompts, and logprobs for one SSE
chunk per token. The reference is the same app over one process.
"""

from __future__ import annotations

from typing import Any

import pytest
from tests.integration.test_serving_engine import MODEL, NO_EOS, tiny_app
from tests.unit.serving.inprocess_clients import sync_client

from agentrt.serving.inprocess import AppRunner

pytestmark = pytest.mark.timeout(300)

PROMPTS = [list(range(1, 30)), [7, 3, 9], list(range(50, 90))]


def streamed_tokens(app: Any) -> list[list[str]]:
    client = sync_client(app)
    outputs = []
    for prompt in PROMPTS:
        stream = client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=12,
            temperature=0.0,
            logprobs=1,
            stream=True,
            extra_body=NO_EOS,
        )
        tokens = [
            token
            for chunk in stream
            if chunk.choices and chunk.choices[0].logprobs is not None
            for token in chunk.choices[0].logprobs.tokens or []
        ]
        outputs.append(tokens)
    return outputs


@pytest.mark.parametrize(
    "split", [{"tensor_parallel_size": 2}, {"pipeline_parallel_size": 2}], ids=["tp2", "pp2"]
)
def test_split_app_streams_the_same_greedy_tokens_as_one_process(split: dict[str, int]) -> None:
    expected_app, _ = tiny_app("fcfs")
    try:
        expected = streamed_tokens(expected_app)
    finally:
        AppRunner.for_app(expected_app).close()
    app, engine = tiny_app("fcfs", **split)
    ranks = engine.engine.runner.ranks  # type: ignore[attr-defined]
    workers = list(ranks._context.processes)
    try:
        assert streamed_tokens(app) == expected
    finally:
        AppRunner.for_app(app).close()
    assert all(len(tokens) == 12 for tokens in expected)
    assert [p.exitcode for p in workers] == [0]  # the workers left with the server
