"""KV retention in the simulator: the policy object decides what the simulated cache keeps."""

from __future__ import annotations

import msgspec
import pytest

from agentrt.scheduling import RetentionConfig, SchedulerConfig
from agentrt.sim.profile import EngineProfile
from agentrt.sim.simulator import SimConfig, Simulation
from agentrt.sim.spec import CallSpec, ProgramSpec


def agent(tool_s: float) -> ProgramSpec:
    """Two calls of 100 blocks of context, with a tool call between them."""
    calls = [
        CallSpec(0, (("a", 1616),), 1600, 16),
        CallSpec(1, (("a", 1648),), 1632, 16, (0,), tool_s),
    ]
    return ProgramSpec("a", "agent", calls, 0.0)


def one_shot(i: int, arrival: float) -> ProgramSpec:
    return ProgramSpec(f"o{i}", "chat", [CallSpec(0, ((f"o{i}", 1616),), 1600, 16)], arrival)


def run(
    profile: EngineProfile, mode: str, programs: list[ProgramSpec], max_hold_s: float = 10.0
) -> Simulation:
    retention = RetentionConfig(prior_interrupt_s=5.0, max_hold_s=max_hold_s)
    config = SimConfig(kv_retention=mode, retention=retention)  # type: ignore[arg-type]
    sim = Simulation(programs, profile, SchedulerConfig(policy="fcfs"), config)
    sim.run()
    return sim


def test_a_pinned_context_outlives_one_shot_programs_lru_would_keep(
    small_profile: EngineProfile,
) -> None:
    # 400 blocks: the agent's context and three one-shot programs' do not all fit.
    # Least recently released first evicts the agent's (released first) while it
    # waits on its tool; retention evicts the finished programs' instead.
    programs = [agent(2.0), *(one_shot(i, 0.3 + 0.6 * i) for i in range(3))]
    lru = run(small_profile, "off", programs)
    ttl = run(small_profile, "ttl", programs)
    assert lru.engines["engine-0"].counters.cached_tokens == 0
    assert ttl.engines["engine-0"].counters.cached_tokens == 1600  # the whole prefix, hit
    counters = ttl.engines["engine-0"].retention.counters
    assert counters.reused == 1 and counters.yielded == 0
    latency = {o.program_id: o.latency for o in ttl._outcomes}
    assert latency["a"] < {o.program_id: o.latency for o in lru._outcomes}["a"]


@pytest.mark.parametrize("host_blocks", [0, 1000])
def test_a_pin_yields_to_running_calls_to_the_host_pool_when_it_has_room(
    small_profile: EngineProfile, host_blocks: int
) -> None:
    # The three one-shot programs run at once and need every block but the pin's
    # (no hold against admissions): the pin yields rather than holding them up. With
    # room in the host pool its context is copied there and swapped back in for the
    # agent's next call.
    profile = msgspec.structs.replace(small_profile, host_blocks=host_blocks)
    programs = [agent(2.0), *(one_shot(i, 0.6) for i in range(3))]
    ttl = run(profile, "ttl", programs, max_hold_s=0.0)
    engine = ttl.engines["engine-0"]
    assert engine.retention.counters.yielded == 1
    assert {o.program_id for o in ttl._outcomes} == {"a", "o0", "o1", "o2"}
    if host_blocks:
        assert (engine.counters.offloads, engine.counters.restores) == (1, 1)
        assert engine.counters.cached_tokens == 1600
    else:
        assert (engine.counters.offloads, engine.counters.restores) == (0, 0)
        assert engine.counters.cached_tokens == 0
    assert engine.host_used == 0 and not engine.offloaded


def test_a_pin_holding_calls_back_is_counted_in_the_run_result(
    small_profile: EngineProfile,
) -> None:
    # The agent is expected back (0.15 s) sooner than its 1,600 tokens take to recompute
    # (0.16 s): its pin keeps the third one-shot call out until the agent's call is in.
    programs = [agent(0.12), *(one_shot(i, 0.1) for i in range(3))]
    retention = RetentionConfig(prior_interrupt_s=0.15, max_hold_s=10.0)
    config = SimConfig(kv_retention="ttl", retention=retention)
    sim = Simulation(programs, small_profile, SchedulerConfig(policy="fcfs"), config)
    result = sim.run()
    counters = sim.engines["engine-0"].retention.counters
    assert (counters.held_back, counters.reused, counters.yielded) == (1, 1, 0)
    assert 0 < counters.held_back_s < 0.15
    assert (result.engines.held_back, result.engines.held_back_s) == (
        counters.held_back,
        counters.held_back_s,
    )
    assert not sim.engines["engine-0"].retention.holding_back


def test_a_pin_past_its_ttl_expires(small_profile: EngineProfile) -> None:
    programs = [agent(8.0), *(one_shot(i, 0.3 + 0.6 * i) for i in range(3))]
    ttl = run(small_profile, "ttl", programs)  # prior 5 s: the 8 s tool outlives the pin
    counters = ttl.engines["engine-0"].retention.counters
    assert counters.expired == 1 and counters.reused == 0


def test_off_keeps_no_pins_and_reports_none(small_profile: EngineProfile) -> None:
    programs = [agent(2.0), *(one_shot(i, 0.3 + 0.6 * i) for i in range(3))]
    sim = run(small_profile, "off", programs)
    assert sim.engines["engine-0"].retention.counters.pins == 0
    assert sim.engines["engine-0"].retention.pinned_blocks == 0


def test_sim_config_rejects_an_unknown_mode() -> None:
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"kv_retention": "forever"}, SimConfig)
