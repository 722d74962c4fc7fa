"""Shared fixtures of the simulator tests: a small engine profile and hand-built programs."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from agentrt.sim.profile import EngineProfile
from agentrt.sim.spec import CallSpec, ProgramSpec


@pytest.fixture
def small_profile() -> EngineProfile:
    """A tiny engine: few slots and blocks, so contention appears with a handful of calls."""
    return EngineProfile(
        name="test-small",
        step_overhead_s=0.01,
        prefill_token_s=0.0001,
        decode_seq_s=0.001,
        kv_token_s=0.000001,
        block_size=16,
        kv_blocks=400,
        max_batch_size=4,
        max_batch_tokens=512,
        max_model_len=4096,
        prefix_caching=True,
        swap_block_s=0.0001,
        swap_overhead_s=0.001,
        host_blocks=1000,
    )


def build_chain(
    pid: str, turns: list[tuple[int, int]], kind: str = "chat", arrival: float = 0.0
) -> ProgramSpec:
    """A sequential chat-like program: each call's prompt is the history so far."""
    calls = []
    history = 0
    for i, (user, decode) in enumerate(turns):
        prompt = history + user
        calls.append(CallSpec(i, ((pid, prompt + decode),), prompt, decode, (i - 1,) if i else ()))
        history = prompt + decode
    return ProgramSpec(pid, kind, calls, arrival)


@pytest.fixture
def chain() -> Callable[..., ProgramSpec]:
    """``chain(pid, [(new prompt tokens, decode tokens), ...], kind=, arrival=)``."""
    return build_chain
