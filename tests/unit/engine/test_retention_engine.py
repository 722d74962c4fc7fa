"""KV retention in the engine: the block manager evicts through the simulator's policy object."""

from __future__ import annotations

import random

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.unit.engine.helpers import (
    assert_block_pool_clean,
    engine_test_device,
    make_tiny_loaded,
    seq,
    small_kv_cache,
    tiny_engine,
)

from agentrt.engine.block_manager import BlockManager
from agentrt.engine.config import EngineConfig
from agentrt.engine.kv_cache import HostSwapPool, PagedKVCache
from agentrt.engine.llm_engine import LLMEngine, StepAdmission
from agentrt.engine.sequence import Sequence
from agentrt.protocol.engine import ProgramTag, SamplingParams
from agentrt.scheduling import (
    Call,
    RetentionConfig,
    RetentionPolicy,
    SchedulerConfig,
    make_scheduler,
)
from agentrt.sim.engine import LiveCall, SimEngine, WindowAdmission
from agentrt.sim.kv import KvCache
from agentrt.sim.profile import EngineProfile
from agentrt.sim.spec import CallSpec

TTL = RetentionConfig(mode="ttl", pin_budget=1.0, min_samples=1)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def program_seq(program: str, tokens: list[int]) -> Sequence:
    """A prompt-only sequence whose call belongs to program ``program``."""
    return seq(program, tokens)


def learn(policy: RetentionPolicy, program: str, seconds: float) -> None:
    policy.predictor.observe(seconds, tool=None, program_id=program)


# Programs that each leave one block of context: p0 ends, the others wait on tools
# predicted to take 5 s, 1 s and 3 s.
RETURNS = {"p1": 5.0, "p2": 1.0, "p3": 3.0}


def engine_evictions() -> list[str]:
    clock = Clock()
    policy = RetentionPolicy(TTL, 4)
    bm = BlockManager(4, 4, True, policy, clock)
    owner: dict[int, str] = {}
    for i, program in enumerate(["p0", "p1", "p2", "p3"]):
        if program in RETURNS:
            learn(policy, program, RETURNS[program])
        s = program_seq(program, [i + 1] * 4)
        bm.acquire_prefix(s, bm.lookup_prefix(s))
        bm.allocate(s, 4)
        s.num_computed_tokens = 4
        bm.register_computed_blocks(s)
        owner[s.block_table[0]] = program
        clock.now += 0.1
        bm.call_finished(s, reload_token_s=0.01, waiting=0, batch_slots=4)
        bm.free(s)
        if program == "p0":
            policy.program_ended("p0")
    new = program_seq("p4", [9] * 8)
    bm.allocate(new, 8)  # two blocks: two cached contexts go
    return [owner[b] for b in new.block_table]


def sim_evictions() -> list[str]:
    policy = RetentionPolicy(TTL, 4)
    kv = KvCache(4, 4, True, policy)
    now = 0.0
    for program in ["p0", "p1", "p2", "p3"]:
        if program in RETURNS:
            learn(policy, program, RETURNS[program])
        kv.acquire([(program, 4)])
        kv.grow(program, 4)
        now += 0.1
        policy.call_finished(program, now, blocks=1, reload_s=0.04)
        kv.release([(program, 4)], program)
        if program == "p0":
            policy.program_ended("p0")
    kv.acquire([("p4", 8)])
    kv.grow("p4", 8)
    before = set(kv.resident)
    kv.evict_to_fit(now)
    return sorted(before - set(kv.resident), key=["p0", "p1", "p2", "p3"].index)


def test_engine_and_simulator_evict_the_same_contexts_from_the_same_state() -> None:
    # The ended program's block first, then the pin expected back last (p1, in 5 s).
    assert engine_evictions() == ["p0", "p1"]
    assert sim_evictions() == ["p0", "p1"]


def test_off_evicts_least_recently_freed_first_as_before() -> None:
    bm = BlockManager(4, 2, True)
    a, b = program_seq("a", [1, 2, 3]), program_seq("b", [4, 5, 6])
    for s in (a, b):
        bm.allocate(s, 3)
        s.num_computed_tokens = 3
        bm.register_computed_blocks(s)
    bm.free(a)
    bm.free(b)
    c = program_seq("c", [7, 8, 9, 10, 11, 12])
    bm.allocate(c, 6)  # the two never-used blocks and one cached one
    assert bm.lookup_prefix(program_seq("a2", [1, 2, 3])) == []  # a's block went first
    assert bm.lookup_prefix(program_seq("b2", [4, 5, 6])) != []


def agent_turn(engine: LLMEngine, program: str, prompt: list[int], call: int) -> list[int]:
    """One call of ``program``, run to completion; returns the tokens it generated."""
    engine.add_request(
        f"{program}-{call}",
        prompt,
        SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
        program=ProgramTag(program_id=program),
    )
    out: list[int] = []
    while engine.has_unfinished_requests():
        for event in engine.step():
            out += event.token_ids
    return out


@pytest.mark.parametrize("mode", ["off", "ttl"])
def test_a_pinned_context_survives_other_programs_during_a_tool_call(mode: str) -> None:
    clock = Clock()
    retention = RetentionConfig(mode=mode, prior_interrupt_s=30.0)  # type: ignore[arg-type]
    config = EngineConfig(
        dtype="float32",
        num_kv_blocks=24,
        block_size=4,
        scheduler=SchedulerConfig(policy="fcfs"),
        retention=retention,
    )
    engine = LLMEngine(config, make_tiny_loaded(), clock=clock)
    rng = random.Random(3)
    history = [rng.randrange(1, 256) for _ in range(40)]  # 10 blocks
    history += agent_turn(engine, "agent", history, 0)
    clock.now += 1.0  # the agent's tool runs; three one-shot programs fill the pool
    for i in range(3):
        agent_turn(engine, f"other-{i}", [rng.randrange(1, 256) for _ in range(40)], 0)
        engine.end_program(f"other-{i}")
    clock.now += 1.0
    hits = engine.block_manager.prefix_hit_tokens
    agent_turn(engine, "agent", [*history, 7, 8, 9], 1)
    reused = engine.block_manager.prefix_hit_tokens - hits
    retained = engine.block_manager.evictable.counters
    stats = engine.stats()
    if mode == "ttl":
        assert reused == 40 and retained.reused == 1  # the whole history, from the pin
        # The agent's two calls: the one-shot programs' pins do not fit the budget the
        # agent's holds, and rank below it (expected back later), so they are refused.
        assert stats.kv_pins == 2 and stats.kv_pins_reused == 1
        assert retained.refused == 3
        assert stats.recomputed_prompt_tokens == 0
    else:
        assert reused == 0 and retained.pins == 0 and stats.kv_pins == 0
        assert stats.recomputed_prompt_tokens == 40  # the history's ten full blocks, again
    assert_block_pool_clean(engine)


@pytest.mark.parametrize("max_hold_s", [0.0, 60.0])
def test_pins_never_block_calls_under_pressure(max_hold_s: float) -> None:
    """Many programs with tool gaps on a pool far too small for their contexts: pins
    yield, every call completes (holding pins against new calls too), and no block leaks."""
    retention = RetentionConfig(
        mode="ttl", prior_interrupt_s=60.0, pin_budget=1.0, max_hold_s=max_hold_s
    )
    engine = tiny_engine(
        num_kv_blocks=30,
        block_size=4,
        max_num_seqs=8,
        scheduler=SchedulerConfig(policy="plas", service_unit="tokens"),
        retention=retention,
    )
    rng = random.Random(5)
    histories = {
        f"p{i}": [rng.randrange(1, 256) for _ in range(rng.randint(8, 30))] for i in range(8)
    }
    done = 0
    for turn in range(3):
        for program, history in histories.items():
            engine.add_request(
                f"{program}-{turn}",
                list(history),
                SamplingParams(temperature=0.0, max_tokens=3, ignore_eos=True),
                program=ProgramTag(program_id=program),
            )
        while engine.has_unfinished_requests():
            for event in engine.step():
                histories[event.call_id.split("-")[0]] += event.token_ids
                done += event.usage is not None
    counters = engine.block_manager.evictable.counters
    assert done == 24
    assert counters.pins > 0 and counters.yielded > 0
    assert engine.block_manager.evictable.pinned_blocks <= engine.block_manager.evictable.budget
    for program in histories:
        engine.end_program(program)
    assert engine.block_manager.evictable.pinned_blocks == 0
    assert_block_pool_clean(engine)


@pytest.mark.parametrize("swap_blocks", [0, 64])
@pytest.mark.parametrize("pin_budget", [0.5, 0.0])
def test_a_lost_context_comes_back_from_the_host_pool(swap_blocks: int, pin_budget: float) -> None:
    """The one-shot programs run at once and need the agent's cached blocks: its pin yields
    (or, with no budget for pins, its unpinned context is evicted). With a host pool its
    blocks are copied there, and back when the agent calls again: a prefix hit, and the
    same greedy tokens as recomputing them."""

    block_bytes = tiny_engine(block_size=4).runner.kv_cache.block_bytes

    def run(mode: str) -> tuple[list[int], LLMEngine]:
        clock = Clock()
        config = EngineConfig(
            dtype="float32",
            num_kv_blocks=24,
            block_size=4,
            max_num_seqs=8,
            swap_space=swap_blocks * block_bytes,
            scheduler=SchedulerConfig(policy="fcfs"),
            # No hold against admissions: the second one-shot call is admitted beside the
            # first and the pin yields to the running pair.
            retention=RetentionConfig(
                mode=mode,  # type: ignore[arg-type]
                prior_interrupt_s=30.0,
                max_hold_s=0.0,
                pin_budget=pin_budget,
            ),
        )
        engine = LLMEngine(config, make_tiny_loaded(), clock=clock)
        rng = random.Random(4)
        history = [rng.randrange(1, 256) for _ in range(40)]
        history += agent_turn(engine, "agent", history, 0)
        clock.now += 1.0
        for i in range(2):  # both at once: 2 x 11 blocks leave no room for the pin
            engine.add_request(
                f"other-{i}",
                [rng.randrange(1, 256) for _ in range(40)],
                SamplingParams(temperature=0.0, max_tokens=4, ignore_eos=True),
                program=ProgramTag(program_id=f"other-{i}"),
            )
        while engine.has_unfinished_requests():
            engine.step()
        clock.now += 1.0
        return agent_turn(engine, "agent", [*history, 7, 8, 9], 1), engine

    recomputed, _ = run("off")
    restored, engine = run("ttl")
    bm = engine.block_manager
    counters = bm.evictable.counters
    assert restored == recomputed
    if pin_budget:
        assert counters.yielded >= 1
    else:
        assert counters.pins == 0 and counters.refused >= 1
    assert counters.lost >= 1
    if swap_blocks:
        assert bm.offloads >= 1 and bm.restores == 1
        assert engine.stats().kv_contexts_restored == 1
        assert engine.stats().recomputed_prompt_tokens == 0
    else:
        assert (bm.offloads, bm.restores) == (0, 0)
        assert engine.stats().recomputed_prompt_tokens > 0
    for program in ("agent", "other-0", "other-1"):
        engine.end_program(program)  # host copies of ended programs are dropped
    assert engine.swap_pool.num_free_blocks == engine.swap_pool.num_blocks
    assert bm.num_free_blocks == bm.num_blocks


# --- admissions against pins: the engine and the simulator decide alike ---

HOLD = RetentionConfig(mode="ttl", pin_budget=1.0, prior_interrupt_s=30.0, max_hold_s=5.0)
START = 100.0
RELOAD_TOKEN_S = 10.0  # a pinned block saves 40 s of recompute: more than the 30 s return
NewCall = tuple[int, float]  # (blocks, seconds since its arrival) of a new program's call
Admitted = tuple[list[str], int]  # the programs admitted, the calls pins held back


def engine_admits(
    capacity: int, pins: list[int], calls: list[NewCall], slots: int, back: int | None = None
) -> Admitted:
    """Programs ``a<i>`` left pinned contexts of ``pins[i]`` blocks; new calls ``n<j>`` of
    ``calls[j]`` wait, then (``back``) the next call of ``a<back>``, one block more than its
    context: the programs the engine's next decision admits, and how many it held back."""
    clock = Clock()
    clock.now = START
    config = EngineConfig(
        dtype="float32",
        num_kv_blocks=capacity,
        block_size=4,
        max_num_seqs=slots,
        max_num_batched_tokens=2048,
        scheduler=SchedulerConfig(policy="fcfs"),
        retention=HOLD,
    )
    engine = LLMEngine(config, make_tiny_loaded(), clock=clock)
    bm = engine.block_manager
    for i, blocks in enumerate(pins):
        s = program_seq(f"a{i}", [i + 1] * (4 * blocks))
        bm.allocate(s, 4 * blocks)
        s.num_computed_tokens = 4 * blocks
        bm.register_computed_blocks(s)
        bm.call_finished(s, reload_token_s=RELOAD_TOKEN_S, waiting=0, batch_slots=slots)
        bm.free(s)
    params = SamplingParams(max_tokens=1, ignore_eos=True)
    for j, (blocks, age) in enumerate(calls):
        prompt = [100 + j] * (4 * blocks - 1)  # the first token reserves the last block
        tag = ProgramTag(program_id=f"n{j}")
        engine.add_request(f"n{j}", prompt, params, program=tag, arrival=START - age)
    if back is not None:
        prompt = [back + 1] * (4 * pins[back]) + [200] * 3
        engine.add_request("back", prompt, params, program=ProgramTag(program_id=f"a{back}"))
    decision = engine.scheduler.schedule(START, StepAdmission(engine, START))
    held = engine.stats().kv_admissions_held
    assert held == bm.evictable.counters.held_back
    return [call.program_id for call in decision.batch], held


def sim_admits(
    capacity: int, pins: list[int], calls: list[NewCall], slots: int, back: int | None = None
) -> Admitted:
    profile = EngineProfile(
        name="same-state",
        step_overhead_s=0.01,
        prefill_token_s=0.0001,
        decode_seq_s=0.001,
        kv_token_s=0.000001,
        block_size=4,
        kv_blocks=capacity,
        max_batch_size=slots,
        max_batch_tokens=2048,
        max_model_len=4096,
        prefix_caching=True,
    )
    scheduler = make_scheduler(SchedulerConfig(policy="fcfs"))
    engine = SimEngine("e", profile, scheduler, "recompute", 1, retention=HOLD)
    kv = engine.kv
    for i, blocks in enumerate(pins):
        segment = [(f"a{i}", 4 * blocks)]
        kv.acquire(segment)
        kv.grow(f"a{i}", 4 * blocks)
        reload_s = 4 * blocks * RELOAD_TOKEN_S
        engine.retention.call_finished(f"a{i}", START, blocks=blocks, reload_s=reload_s)
        kv.release(segment, f"a{i}")
    specs = [
        (f"n{j}", CallSpec(0, ((f"n{j}", 4 * blocks),), 4 * blocks - 1, 1), START - age)
        for j, (blocks, age) in enumerate(calls)
    ]
    if back is not None:
        context = 4 * pins[back]
        segments = ((f"a{back}", context), (f"a{back}+", 4))
        specs.append((f"a{back}", CallSpec(1, segments, context + 3, 1), START))
    for program, spec, arrival in specs:
        call = Call(f"{program}/0", program, arrival=arrival, prompt_tokens=spec.prompt_tokens)
        engine.add(LiveCall(spec, call, None, engine, START), START)
    decision = scheduler.schedule(START, WindowAdmission(engine, 1, START))
    return [call.program_id for call in decision.batch], engine.retention.counters.held_back


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    capacity=st.integers(6, 24),
    pins=st.lists(st.integers(1, 5), max_size=4),
    calls=st.lists(
        st.tuples(st.integers(1, 6), st.sampled_from([0.0, 1.0, 6.0])), min_size=1, max_size=5
    ),
    slots=st.integers(1, 4),
    back=st.integers(0, 3),
)
def test_engine_and_simulator_admit_the_same_calls_beside_the_same_pins(
    capacity: int, pins: list[int], calls: list[NewCall], slots: int, back: int
) -> None:
    while sum(pins) > capacity:  # every pin is made (the budget is the whole pool)
        pins = pins[:-1]
    calls = [(min(blocks, capacity), age) for blocks, age in calls]
    returning = back if back < len(pins) and pins[back] < capacity else None
    engine = engine_admits(capacity, pins, calls, slots, returning)
    assert engine == sim_admits(capacity, pins, calls, slots, returning)


def test_a_pin_holds_new_calls_back_and_lets_its_program_through() -> None:
    # 12 blocks, 6 pinned to a0: the first new call (4 blocks) runs; the second (4 more)
    # would need the pin's blocks and is held back, and the third new program waits
    # behind it; a0's next call (7 blocks, 6 of them its pin) goes ahead.
    calls = [(4, 0.0), (4, 0.0), (1, 0.0)]
    for admits in (engine_admits, sim_admits):
        assert admits(12, [6], calls, 4) == (["n0"], 1)  # n2 only waits behind n1
        assert admits(12, [6], calls, 4, back=0) == (["n0", "a0"], 1)
        # A call that arrived max_hold_s ago is not held back (the next one is again); nor
        # one with nothing else admitted before it (the pin yields, the engine never idles).
        assert admits(12, [6], [(4, 0.0), (4, 6.0), (1, 0.0)], 4) == (["n0", "n1"], 1)
        assert admits(12, [6], [(8, 0.0)], 4) == (["n0"], 0)


# --- lost contexts come back at admission ---


def host_tier(num_blocks: int = 6, host_blocks: int = 16) -> tuple[BlockManager, PagedKVCache]:
    """A block manager that pins nothing (budget 0) over a random cache with a host pool
    (pinned, when the tests run on a GPU)."""
    cache = small_kv_cache(num_blocks, engine_test_device())
    policy = RetentionPolicy(RetentionConfig(mode="ttl", pin_budget=0.0), num_blocks)
    bm = BlockManager(num_blocks, 4, True, policy, Clock())
    bm.attach_host(HostSwapPool(cache, 0, num_blocks=host_blocks))
    return bm, cache


def compute(bm: BlockManager, s: Sequence) -> None:
    """Admit ``s`` as the engine does (device hits, then the host copy) and compute the rest."""
    hits = bm.lookup_prefix(s)
    restore = bm.host_prefix(s, len(hits))
    bm.acquire_prefix(s, hits, restoring=len(restore))
    if restore:
        bm.restore_prefix(s, restore)
    bm.allocate(s, s.num_tokens)
    s.num_computed_tokens = s.num_tokens
    bm.register_computed_blocks(s)


def finish_call(bm: BlockManager, s: Sequence) -> None:
    bm.call_finished(s, reload_token_s=0.01, waiting=0, batch_slots=4)
    bm.free(s)


def test_a_lost_context_is_copied_back_at_admission_when_no_block_is_free() -> None:
    bm, cache = host_tier()
    history = list(range(1, 14))  # 3 full blocks and one token
    first = program_seq("agent", history)
    compute(bm, first)
    kv = {tuple(history[i * 4 : i * 4 + 4]): cache.kv[:, :, b].clone() for i, b in enumerate(first.block_table[:3])}
    finish_call(bm, first)
    other = program_seq("other", list(range(100, 124)))  # takes all 6 blocks: agent's are lost
    compute(bm, other)
    assert bm.evictable.counters.lost == 1 and bm.offloads == 1
    bm.call_arrived("agent", 1.0)  # no free block: nothing prefetched
    assert bm.restores == 0
    finish_call(bm, other)
    bm.program_ended("other")
    nxt = program_seq("agent", [*history, 50, 51, 52, 53])
    assert bm.lookup_prefix(nxt) == [] and bm.host_prefix(nxt, 0) == [0, 1, 2]
    compute(bm, nxt)
    assert bm.restores == 1 and bm.recomputed_prompt_tokens == 0
    assert nxt.num_cached_tokens == 12 and bm.prefix_hit_tokens == 12
    for i, block in enumerate(nxt.block_table[:3]):
        assert torch.equal(cache.kv[:, :, block], kv[tuple(history[i * 4 : i * 4 + 4])])
    assert bm.host is not None and bm.host.num_free_blocks == bm.host.num_blocks
    finish_call(bm, nxt)
    bm.program_ended("agent")
    assert bm.num_free_blocks == bm.num_blocks


def test_the_host_copy_continues_the_prefix_still_cached_on_the_device() -> None:
    bm, _ = host_tier()
    history = list(range(1, 18))  # 4 full blocks and one token
    first = program_seq("agent", history)
    compute(bm, first)
    blocks = list(first.block_table[:4])
    finish_call(bm, first)
    # 4 blocks: the 2 free ones, then the agent's, its last blocks first (released first).
    other = program_seq("other", list(range(100, 116)))
    compute(bm, other)
    assert bm.offloads == 1
    finish_call(bm, other)
    nxt = program_seq("agent", [*history, 60])
    hits = bm.lookup_prefix(nxt)
    # The first two blocks are still cached; the copy holds all four in prompt order.
    assert hits == blocks[:2] and bm.host_prefix(nxt, 2) == [2, 3]
    compute(bm, nxt)
    assert nxt.num_cached_tokens == 16 and bm.recomputed_prompt_tokens == 0


def test_a_dropped_host_copy_is_recomputed_and_counted() -> None:
    bm, _ = host_tier()
    history = list(range(1, 14))
    first = program_seq("agent", history)
    compute(bm, first)
    finish_call(bm, first)
    other = program_seq("other", list(range(100, 124)))
    compute(bm, other)
    nxt = program_seq("agent", [*history, 50])
    restore = bm.host_prefix(nxt, 0)
    assert restore
    finish_call(bm, other)
    bm.make_host_room(bm.host.num_blocks if bm.host else 0)  # a swap needs the whole pool
    bm.acquire_prefix(nxt, [], restoring=len(restore))
    bm.restore_prefix(nxt, restore)
    assert nxt.num_computed_tokens == 0 and nxt.num_cached_tokens == 0
    assert bm.prefix_hit_tokens == 0 and bm.recomputed_prompt_tokens == 12
