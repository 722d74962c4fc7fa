"""The engine's text output on a real byte-level tokenizer: logit_bias, and a stop string
completed by the UTF-8 tail the detokenizer holds back until the choice ends."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from agentrt.engine.config import EngineConfig
from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.loader import load_model
from agentrt.protocol.engine import SamplingParams
from agentrt.scheduling import SchedulerConfig


@pytest.fixture(scope="module")
def engine(tiny_folder: Path) -> LLMEngine:
    config = EngineConfig(
        dtype="float32", num_kv_blocks=64, block_size=4, scheduler=SchedulerConfig(policy="fcfs")
    )
    return LLMEngine(config, load_model(tiny_folder, dtype="float32"))


def run(engine: LLMEngine, sampling: SamplingParams) -> tuple[list[int], str, Any, Any]:
    """One call to the end: (token ids, text, finish reason, stop reason)."""
    prompt = engine.tokenizer.encode("Hello", add_special_tokens=False)
    engine.add_request(f"call-{id(sampling)}", prompt, sampling)
    ids: list[int] = []
    text, finish, stop = "", None, None
    while engine.has_unfinished_requests():
        for event in engine.step():
            ids += event.token_ids
            text += event.text
            finish, stop = event.finish_reason or finish, event.stop_reason or stop
    return ids, text, finish, stop


def incomplete_utf8_token(tokenizer: Any) -> int:
    """A token whose text alone is the first bytes of a character (decodes to U+FFFD)."""
    for token in tokenizer.encode("😀", add_special_tokens=False):
        if tokenizer.decode([token]).endswith("\ufffd"):
            return int(token)
    raise AssertionError("the emoji is one token in this vocabulary")


def test_logit_bias_forces_and_bans_tokens(engine: LLMEngine) -> None:
    word = engine.tokenizer.encode(" cat", add_special_tokens=False)[0]
    ids, text, finish, _ = run(
        engine,
        SamplingParams(max_tokens=4, temperature=0.8, seed=1, logit_bias={word: 100.0}),
    )
    assert ids == [word] * 4 and text == " cat" * 4 and finish == "length"
    free, _, _, _ = run(engine, SamplingParams(max_tokens=4, temperature=0.0))
    banned, _, _, _ = run(
        engine, SamplingParams(max_tokens=4, temperature=0.0, logit_bias={free[0]: -100.0})
    )
    assert banned[0] != free[0]


def test_a_stop_string_completed_by_the_held_back_utf8_tail_stops_the_choice(
    engine: LLMEngine,
) -> None:
    partial = incomplete_utf8_token(engine.tokenizer)
    forced = SamplingParams(max_tokens=1, temperature=0.0, logit_bias={partial: 100.0})
    ids, text, finish, _ = run(engine, forced)
    assert ids == [partial] and text == "\ufffd" and finish == "length"  # as a full decode gives
    stopping = SamplingParams(
        max_tokens=1, temperature=0.0, logit_bias={partial: 100.0}, stop=["\ufffd"]
    )
    ids, text, finish, stop = run(engine, stopping)
    assert ids == [partial] and text == "" and (finish, stop) == ("stop", "\ufffd")
