"""The engine model: step times, prefix cache, KV capacity, swap and recompute preemption."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from agentrt.scheduling import SchedulerConfig
from agentrt.sim.kv import KvCache
from agentrt.sim.metrics import isolated_call_seconds, jain_index, percentile
from agentrt.sim.profile import EngineProfile
from agentrt.sim.simulator import SimConfig, Simulation
from agentrt.sim.spec import CallSpec, ProgramSpec

Chain = Callable[..., ProgramSpec]


def _run(
    programs: list[ProgramSpec], profile: EngineProfile, policy: str = "plas", **sim: object
) -> Simulation:
    simulation = Simulation(programs, profile, SchedulerConfig(policy=policy), SimConfig(**sim))  # type: ignore[arg-type]
    simulation.result = simulation.run()  # type: ignore[attr-defined]
    return simulation


@pytest.mark.parametrize("steps", [1, 8])
def test_a_call_alone_takes_its_prefill_and_decode_steps(
    chain: Chain, small_profile: EngineProfile, steps: int
) -> None:
    program = chain(
        "p", [(1000, 50)]
    )  # 1000 prompt tokens: two prefill chunks of the 508-token budget
    sim = _run([program], small_profile, steps_per_schedule=steps)
    result = sim.result  # type: ignore[attr-defined]
    expected = isolated_call_seconds(1000, 50, small_profile)
    assert result.latency.mean == pytest.approx(expected)
    assert result.engines.prefill_tokens == 1000
    assert result.engines.decode_tokens == 50


def test_isolated_call_seconds_adds_up_the_step_terms(small_profile: EngineProfile) -> None:
    p = small_profile
    expected = p.step_time(100, 0, 100) + sum(p.step_time(0, 1, 100 + i) for i in range(1, 3))
    assert isolated_call_seconds(100, 3, p) == pytest.approx(expected)


def test_a_conversation_hits_its_own_history_in_the_prefix_cache(
    chain: Chain, small_profile: EngineProfile
) -> None:
    program = chain("p", [(200, 40), (30, 40), (30, 40)])
    result = _run([program], small_profile).result  # type: ignore[attr-defined]
    assert result.engines.prefix_hit_rate > 0.5
    # Without a prefix cache every call prefills its whole prompt.
    no_cache = msgspec.structs.replace(small_profile, prefix_caching=False)
    cold = _run([program], no_cache).result  # type: ignore[attr-defined]
    assert cold.engines.prefill_tokens == sum(c.prompt_tokens for c in program.calls)
    assert cold.latency.mean > result.latency.mean


def test_kv_is_released_when_programs_finish(chain: Chain, small_profile: EngineProfile) -> None:
    programs = [chain(f"p{i}", [(300, 60), (50, 60)], arrival=0.01 * i) for i in range(10)]
    sim = _run(programs, small_profile)
    for engine in sim.engines.values():
        assert engine.kv.refs == {}
        assert engine.host_used == 0
        assert not engine.live
        assert engine.kv.used <= engine.kv.capacity
    no_cache = _run(programs, msgspec.structs.replace(small_profile, prefix_caching=False))
    assert all(e.kv.used == 0 for e in no_cache.engines.values())


def _contended(chain: Chain) -> list[ProgramSpec]:
    # Long calls fill the batch; short programs arrive while they run.
    longs = [chain(f"long{i}", [(400, 300)] * 3) for i in range(4)]
    shorts = [chain(f"short{i}", [(100, 20)], arrival=0.5 + 0.2 * i) for i in range(8)]
    return longs + shorts


def test_program_aware_policy_preempts_by_swapping(
    chain: Chain, small_profile: EngineProfile
) -> None:
    result = _run(_contended(chain), small_profile, "plas").result  # type: ignore[attr-defined]
    assert result.engines.preemptions > 0
    assert result.engines.swaps_out > 0 and result.engines.swaps_in == result.engines.swaps_out
    assert result.engines.swap_seconds > 0
    assert result.engines.recomputes == 0


def test_recompute_preemption_drops_kv_and_prefills_again(
    chain: Chain, small_profile: EngineProfile
) -> None:
    # Without a prefix cache, dropped KV is gone: it must be computed again.
    no_cache = msgspec.structs.replace(small_profile, prefix_caching=False)
    swap = _run(_contended(chain), no_cache, "plas").result  # type: ignore[attr-defined]
    recompute = _run(_contended(chain), no_cache, "plas", preemption="recompute").result  # type: ignore[attr-defined]
    assert recompute.engines.recomputes > 0 and recompute.engines.swaps_out == 0
    assert recompute.engines.prefill_tokens > swap.engines.prefill_tokens
    # With a prefix cache, the dropped blocks stay cached and are found again.
    cached = _run(_contended(chain), small_profile, "plas", preemption="recompute").result  # type: ignore[attr-defined]
    assert cached.engines.prefill_tokens < recompute.engines.prefill_tokens


def test_fcfs_recomputes_like_vllm_and_program_aware_policies_swap(
    chain: Chain, small_profile: EngineProfile
) -> None:
    config = SimConfig()
    assert config.preemption_for("fcfs") == "recompute"
    assert config.preemption_for("atlas") == "swap"
    assert SimConfig(preemption="swap").preemption_for("fcfs") == "swap"


def test_a_full_host_pool_falls_back_to_recompute(
    chain: Chain, small_profile: EngineProfile
) -> None:
    tiny_host = msgspec.structs.replace(small_profile, host_blocks=1)
    result = _run(_contended(chain), tiny_host, "plas").result  # type: ignore[attr-defined]
    assert result.engines.preemptions > 0
    assert result.engines.swaps_out == 0 and result.engines.recomputes == result.engines.preemptions


def test_kv_capacity_limits_the_batch(chain: Chain, small_profile: EngineProfile) -> None:
    # Each call needs ~2,000 tokens = ~125 blocks; 400 blocks hold 3 of them, not the 4 slots.
    programs = [chain(f"p{i}", [(1900, 100)]) for i in range(4)]
    sim = Simulation(
        programs, small_profile, SchedulerConfig(policy="fcfs"), SimConfig(steps_per_schedule=1)
    )
    engine = next(iter(sim.engines.values()))
    batch_sizes: list[int] = []
    run_window = engine.run_window

    def recording_run_window(now: float, on_finish: Callable[..., None]) -> float | None:
        end = run_window(now, on_finish)
        batch_sizes.append(len(engine.scheduler.running))
        return end

    engine.run_window = recording_run_window  # type: ignore[method-assign]
    result = sim.run()
    assert result.programs == 4
    assert max(batch_sizes) == 3
    assert result.engines.preemptions == 0  # FCFS never displaces a running call for a waiting one


def test_a_call_that_can_never_fit_is_reported(small_profile: EngineProfile) -> None:
    huge = ProgramSpec("huge", "chat", [CallSpec(0, (("huge", 7000),), 6990, 10)])
    with pytest.raises(RuntimeError, match="never fits"):
        Simulation([huge], small_profile, SchedulerConfig(policy="fcfs")).run()


def test_kv_cache_evicts_least_recently_used_unheld_keys() -> None:
    kv = KvCache(capacity_blocks=4, block_size=16, prefix_caching=True)
    for key in ("a", "b", "c"):
        kv.acquire([(key, 16)])
        kv.grow(key, 16)
        kv.release([(key, 16)])
    kv.acquire([("a", 16)])
    kv.release([("a", 16)])  # "a" is now the most recently used
    kv.acquire([("d", 32)])
    kv.grow("d", 32)
    kv.evict_to_fit(0.0)
    assert set(kv.resident) == {"a", "c", "d"} or set(kv.resident) == {"a", "d"} | {"c"}
    assert "b" not in kv.resident
    assert kv.used <= kv.capacity
    assert kv.cached_prefix([("a", 16), ("x", 16)], 100) == 16


def test_summary_helpers() -> None:
    assert percentile([1.0, 2.0, 3.0, 4.0], 50) == pytest.approx(2.5)
    assert percentile([5.0], 99) == 5.0
    assert jain_index([1.0, 1.0, 1.0]) == pytest.approx(1.0)
    assert jain_index([1.0, 0.0, 0.0, 0.0]) == pytest.approx(0.25)


@pytest.mark.parametrize("wall", [False, True])
def test_service_is_the_token_share_or_the_whole_step(
    small_profile: EngineProfile, wall: bool
) -> None:
    from agentrt.scheduling import Call, make_scheduler
    from agentrt.sim.engine import LiveCall, SimEngine

    engine = SimEngine(
        "e",
        small_profile,
        make_scheduler(SchedulerConfig(policy="plas")),
        "swap",
        4,
        charge_wall_time=wall,
    )
    calls = []
    for i in range(2):
        spec = CallSpec(0, ((f"p{i}", 110),), 100, 10)
        live = LiveCall(spec, Call(f"c{i}", f"p{i}", prompt_tokens=100), None, engine, 0.0)
        engine.add(live, 0.0)
        calls.append(live)
    end = engine.run_window(0.0, lambda live, at: None)
    assert end is not None
    charged = [live.call.service for live in calls]
    if wall:  # each call took part in every step of the window
        assert charged == [pytest.approx(end), pytest.approx(end)]
    else:  # the two calls split each step by the tokens they fed
        assert sum(charged) == pytest.approx(end)


def test_by_default_a_call_is_charged_every_step_it_shares(
    small_profile: EngineProfile, chain: Callable[..., ProgramSpec]
) -> None:
    """Two calls decoding side by side each use up their quantum at the pace of the
    steps, not at half that pace: service is in model seconds per call, as in the engine."""
    programs = [chain(f"p{i}", [(20, 300)]) for i in range(2)]
    steps = 2 * 8 + 300  # at most: prefill, then one token per step
    one_step = small_profile.step_time(0, 2, 2 * 320)
    quantum = 0.75 * 300 * one_step  # between a half share and the whole of the steps
    assert 0.5 * steps * small_profile.step_time(40, 2, 2 * 320) < quantum
    config = SchedulerConfig(policy="mlfq", num_queues=2, first_quantum=quantum)
    sim = Simulation(programs, small_profile, config)
    sim.run()
    counters = sim.engines["engine-0"].scheduler.counters
    assert counters.demotions == 2


def test_a_swapped_call_keeps_its_shared_prefix_through_an_eviction(
    small_profile: EngineProfile,
) -> None:
    """Swap-out copies the call's whole context, shared prefix included (as vLLM does):
    if the prefix is evicted meanwhile, swap-in restores it and nothing is recomputed."""
    from agentrt.scheduling import Call, make_scheduler
    from agentrt.sim.engine import LiveCall, SimEngine

    engine = SimEngine(
        "e", small_profile, make_scheduler(SchedulerConfig(policy="plas")), "swap", 4
    )
    calls = []
    for i in range(2):  # two programs with the same 160-token system prompt
        spec = CallSpec(0, (("sys", 160), (f"own{i}", 80)), 200, 40)
        live = LiveCall(spec, Call(f"c{i}", f"p{i}", prompt_tokens=200), None, engine, 0.0)
        engine.add(live, 0.0)
        calls.append(live)
    engine.run_window(0.0, lambda live, at: None)
    first, other = calls
    computed = first.computed
    assert computed > 200 and engine.kv.refs["sys"] == 2
    engine._preempt(first)
    assert engine.host_used == engine.kv.blocks(160) + engine.kv.blocks(computed - 160)
    engine._preempt(other)  # the prefix is now held by nobody ... and evicted
    engine.kv.drop("sys")
    seconds = engine._load(first)
    assert first.computed == computed  # nothing to recompute
    assert first.prefill_needed() == 0
    assert engine.kv.resident["sys"] == 160
    blocks = engine.kv.blocks(160) + engine.kv.blocks(computed - 160)
    assert seconds == pytest.approx(
        small_profile.swap_overhead_s + blocks * small_profile.swap_block_s
    )
