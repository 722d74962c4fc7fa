"""What the engine charges its scheduler for each step a call took part in.

``service_unit = "time"`` is in seconds of model-executor time per call, the
unit of the scheduler's boundaries and quanta: each call in a step is charged
the step's whole duration, as vLLM accumulates model time per request. A
token share of the step would shrink with the batch, so a decoding call would
never use up a quantum and every queue policy would be FCFS. ``auto`` (the
default) is tokens on a CPU engine: each call is charged the tokens it fed.
"""

from __future__ import annotations

import pytest
from tests.unit.engine.helpers import random_prompts, tiny_engine

from agentrt.engine.llm_engine import LLMEngine
from agentrt.engine.sequence import Sequence
from agentrt.protocol.engine import ProgramTag, SamplingParams
from agentrt.scheduling import SchedulerConfig


def run_two_programs(engine: LLMEngine, lengths: list[int], steps: int) -> list[Sequence]:
    """One call each of two programs, prompts of ``lengths``, run for ``steps`` steps."""
    for i, prompt in enumerate(random_prompts(lengths, seed=5)):
        engine.add_request(
            f"c{i}",
            prompt,
            SamplingParams(temperature=0.0, max_tokens=8),
            program=ProgramTag(program_id=f"p{i}"),
        )
    for _ in range(steps):
        engine.step()
    return [engine.seqs["c0"], engine.seqs["c1"]]


def test_every_call_in_a_step_is_charged_the_whole_step() -> None:
    engine = tiny_engine(scheduler=SchedulerConfig(policy="plas", service_unit="time"))
    # Both prompts are prefilled together, then both decode.
    seqs = run_two_programs(engine, [6, 6], steps=4)
    assert all(seq.status.name == "RUNNING" for seq in seqs)
    # Timings split each step by tokens (usage reporting); the scheduler gets whole steps.
    steps_total = sum(seq.timings.model_time for seq in seqs)
    assert steps_total > 0
    for seq in seqs:
        assert seq.call.service == pytest.approx(steps_total)


def test_auto_charges_each_call_the_tokens_it_fed_on_a_cpu() -> None:
    engine = tiny_engine(scheduler=SchedulerConfig(policy="plas"), device="cpu")
    assert engine.scheduler_config.service_unit == "tokens"
    # One step prefills both prompts, three decode one token each.
    seqs = run_two_programs(engine, [6, 9], steps=4)
    assert [seq.call.service for seq in seqs] == [6 + 3, 9 + 3]
