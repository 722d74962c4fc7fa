"""The engine under load: nothing leaks, nothing runs out of memory, priorities show.

A KV pool far smaller than the offered load must lead to preemption (swap or
recompute), never to an error; every block must come back afterwards, even
with calls aborted at random points of their life.
"""

from __future__ import annotations

import random

import pytest
from tests.unit.engine.helpers import assert_block_pool_clean, random_prompts, tiny_engine

from agentrt.protocol.engine import ProgramTag, SamplingParams
from agentrt.scheduling import SchedulerConfig


@pytest.mark.timeout(900)  # shared CI machines: fast when quiet, but do not fail on noise
def test_a_thousand_requests_with_aborts_and_preemptions_leave_every_block_free() -> None:
    rng = random.Random(0)
    engine = tiny_engine(
        num_kv_blocks=40,
        block_size=4,
        max_num_seqs=32,
        swap_space=6 * 4 * 2 * 2 * 4 * 16 * 4,  # about six blocks of the tiny model's KV
        # LAS: every new call outranks the running ones, so a full pool forces preemptions.
        scheduler=SchedulerConfig(policy="las", service_unit="tokens"),
    )
    bm = engine.block_manager
    submitted = aborted = finished = 0
    live: list[str] = []
    while submitted < 1000 or engine.has_unfinished_requests():
        for _ in range(rng.randint(2, 14)):
            if submitted == 1000:
                break
            prompt = [rng.randrange(1, 256) for _ in range(rng.randint(1, 30))]
            n = 2 if rng.random() < 0.05 else 1
            engine.add_request(
                f"r{submitted}",
                prompt,
                SamplingParams(temperature=0.0, max_tokens=rng.randint(1, 4), n=n),
            )
            live.append(f"r{submitted}")
            submitted += 1
        if live and rng.random() < 0.4:
            victim = live.pop(rng.randrange(len(live)))
            aborted += bool(engine.abort_request(victim))
        for event in engine.step():
            if event.usage is not None:
                finished += 1
                if event.call_id in live:
                    live.remove(event.call_id)
        assert bm.num_used_blocks <= bm.num_blocks
    stats = engine.stats()
    assert finished + aborted == 1000 and aborted > 50, (finished, aborted)
    assert engine.stats().steps < 400  # keeps the test fast: many calls per step
    assert stats.preemptions_swap > 0 and stats.preemptions_recompute > 0
    assert_block_pool_clean(engine)


def test_an_undersized_pool_completes_everything_by_preemption() -> None:
    prompts = random_prompts([40, 35, 30, 25, 20, 45, 38, 28], seed=21)
    engine = tiny_engine(
        num_kv_blocks=24,
        block_size=4,
        scheduler=SchedulerConfig(policy="las", service_unit="tokens"),
    )
    outputs = engine.generate(prompts, SamplingParams(temperature=0.0, max_tokens=30))
    assert all(len(o[0]) == 30 for o in outputs)
    stats = engine.stats()
    assert stats.preemptions_swap + stats.preemptions_recompute > 0
    assert_block_pool_clean(engine)


def completion_order(policy: str) -> list[str]:
    """A program with history ("long") and fresh programs ("short-i") compete for a pool
    that holds only four calls at a time; the long program's calls arrive first."""
    engine = tiny_engine(
        num_kv_blocks=22,
        block_size=4,
        scheduler=SchedulerConfig(
            policy=policy, service_unit="tokens", first_boundary=16, first_quantum=1000
        ),  # type: ignore[arg-type]
    )
    history = random_prompts([30], seed=22)[0]
    engine.add_request(
        "warmup",
        history,
        SamplingParams(temperature=0.0, max_tokens=10),
        program=ProgramTag(program_id="long"),
    )
    while engine.has_unfinished_requests():
        engine.step()
    prompts = random_prompts([10] * 8, seed=23)
    for i in range(4):
        engine.add_request(
            f"long-{i}",
            prompts[i],
            SamplingParams(temperature=0.0, max_tokens=10),
            program=ProgramTag(program_id="long"),
        )
    for i in range(4):
        engine.add_request(
            f"short-{i}",
            prompts[4 + i],
            SamplingParams(temperature=0.0, max_tokens=10),
            program=ProgramTag(program_id=f"short-{i}"),
        )
    order: list[str] = []
    while engine.has_unfinished_requests():
        order += [e.call_id for e in engine.step() if e.usage is not None]
    assert_block_pool_clean(engine)
    return order


def test_program_level_priorities_show_in_the_completion_order() -> None:
    plas = completion_order("plas")
    assert set(plas[:4]) == {f"short-{i}" for i in range(4)}  # fresh programs first
    fcfs = completion_order("fcfs")
    assert set(fcfs[:4]) == {f"long-{i}" for i in range(4)}  # the control: arrival order


def test_gittins_learns_sizes_from_ended_programs_and_serves_the_nearest_to_done() -> None:
    engine = tiny_engine(
        num_kv_blocks=40,
        block_size=4,
        max_num_seqs=1,
        scheduler=SchedulerConfig(policy="gittins", service_unit="tokens", gittins_min_programs=3),
    )
    prompts = random_prompts([10] * 8, seed=24)
    params = SamplingParams(temperature=0.0, max_tokens=10, ignore_eos=True)

    def run(request: str, prompt: list[int], program: str) -> None:
        engine.add_request(request, prompt, params, program=ProgramTag(program_id=program))

    for i in range(3):  # three programs of one 20-token call (prefill and decode) end
        run(f"seen-{i}", prompts[i], f"seen-{i}")
        while engine.has_unfinished_requests():
            engine.step()
        engine.end_program(f"seen-{i}")
    run("old-0", prompts[3][:5], "old")  # 15 of its 20 tokens: nearly done
    while engine.has_unfinished_requests():
        engine.step()
    for i in range(3):
        run(f"new-{i}", prompts[4 + i], f"new-{i}")
    run("old-1", prompts[7][:1], "old")  # arrives last, runs first
    order: list[str] = []
    while engine.has_unfinished_requests():
        order += [e.call_id for e in engine.step() if e.usage is not None]
    assert len(engine.scheduler.policy.sizes) == 3  # type: ignore[attr-defined]
    assert order[0] == "old-1" and sorted(order[1:]) == ["new-0", "new-1", "new-2"]
    assert_block_pool_clean(engine)


def test_an_untagged_call_is_a_program_that_ends_with_it() -> None:
    engine = tiny_engine(
        num_kv_blocks=40,
        block_size=4,
        scheduler=SchedulerConfig(policy="gittins", service_unit="tokens", gittins_min_programs=1),
    )
    prompts = random_prompts([6, 6], seed=25)
    engine.add_request("done", prompts[0], SamplingParams(temperature=0.0, max_tokens=3))
    engine.add_request("dropped", prompts[1], SamplingParams(temperature=0.0, max_tokens=30))
    engine.step()
    engine.abort_request("dropped")
    while engine.has_unfinished_requests():
        engine.step()
    assert len(engine.scheduler.table) == 0
    assert len(engine.scheduler.policy.sizes) == 2  # type: ignore[attr-defined]
