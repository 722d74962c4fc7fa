"""End-to-end simulations: every program completes, and program-aware policies help under load."""

from __future__ import annotations

from collections.abc import Callable

import msgspec
import pytest

from agentrt.scheduling import POLICIES, SchedulerConfig
from agentrt.sim.engine import SimEngine, WindowAdmission
from agentrt.sim.profile import EngineProfile
from agentrt.sim.simulator import SimConfig, Simulation, simulate
from agentrt.sim.spec import ProgramSpec
from agentrt.sim.workloads import LatsWorkload, poisson_arrivals

Chain = Callable[..., ProgramSpec]


def _mixed_load(chain: Chain) -> list[ProgramSpec]:
    """Long multi-call programs that keep the batch full, and short ones arriving among them."""
    programs = [chain(f"long{i}", [(300, 200)] * 4, kind="long", arrival=0.3 * i) for i in range(6)]
    programs += [
        chain(f"short{i}", [(80, 30)], kind="short", arrival=0.5 + 0.4 * i) for i in range(20)
    ]
    return sorted(programs, key=lambda p: p.arrival)


@pytest.mark.parametrize("policy", POLICIES)
def test_every_program_completes_under_every_policy(
    chain: Chain, small_profile: EngineProfile, policy: str
) -> None:
    programs = _mixed_load(chain)
    result = simulate(programs, small_profile, SchedulerConfig(policy=policy))
    assert result.programs == len(programs)
    assert result.calls == sum(len(p.calls) for p in programs)
    assert result.engines.decode_tokens == sum(p.decode_tokens for p in programs)
    assert 0 < result.jain_fairness <= 1
    assert result.latency.p50 <= result.latency.p95 <= result.latency.p99


def test_plas_beats_fcfs_on_mean_latency_under_load(
    chain: Chain, small_profile: EngineProfile
) -> None:
    programs = _mixed_load(chain)
    fcfs = simulate(programs, small_profile, SchedulerConfig(policy="fcfs"))
    plas = simulate(programs, small_profile, SchedulerConfig(policy="plas"))
    assert plas.latency.mean < fcfs.latency.mean
    # The gain comes from short programs no longer queueing behind long ones.
    assert plas.latency_by_kind["short"].mean < 0.5 * fcfs.latency_by_kind["short"].mean
    assert plas.wait.queue < fcfs.wait.queue


def test_same_inputs_same_results(small_profile: EngineProfile) -> None:
    programs = poisson_arrivals(LatsWorkload().generate(3, seed=1), 0.5, seed=1)
    a = simulate(programs, small_profile, SchedulerConfig(policy="atlas"))
    b = simulate(programs, small_profile, SchedulerConfig(policy="atlas"))
    assert a.latency == b.latency and a.engines == b.engines


@pytest.mark.parametrize(("kv_blocks", "expected"), [(5000, {True}), (400, {True, False})])
def test_skipping_the_kv_reservation_when_everything_fits_changes_no_decision(
    chain: Chain,
    small_profile: EngineProfile,
    monkeypatch: pytest.MonkeyPatch,
    kv_blocks: int,
    expected: set[bool],
) -> None:
    """The shortcut taken when every live call fits at its largest gives the same run as the
    full per-segment reservation, whether it applies to every decision or to some."""
    profile = msgspec.structs.replace(small_profile, kv_blocks=kv_blocks)
    programs = _mixed_load(chain) + poisson_arrivals(LatsWorkload().generate(2, seed=3), 2.0, 3)
    programs.sort(key=lambda p: p.arrival)
    shortcut: list[bool] = []

    class Recorded(WindowAdmission):
        def __init__(self, engine: SimEngine, steps: int, now: float) -> None:
            super().__init__(engine, steps, now)
            shortcut.append(self.fits_all)

    monkeypatch.setattr("agentrt.sim.engine.WindowAdmission", Recorded)
    for policy in ("fcfs", "atlas"):
        shortcut.clear()
        with_shortcut = simulate(programs, profile, SchedulerConfig(policy=policy))
        assert set(shortcut) == expected
        with monkeypatch.context() as m:
            m.setattr("agentrt.sim.simulator.longest_segments", lambda programs: None)
            shortcut.clear()
            full = simulate(programs, profile, SchedulerConfig(policy=policy))
        assert set(shortcut) == {False}
        assert with_shortcut.latency == full.latency
        assert with_shortcut.engines == full.engines and with_shortcut.wait == full.wait


def test_token_service_unit_runs_too(chain: Chain, small_profile: EngineProfile) -> None:
    result = simulate(
        _mixed_load(chain), small_profile, SchedulerConfig(policy="plas", service_unit="tokens")
    )
    assert result.programs == 26


@pytest.mark.parametrize("balancer", ["round_robin", "least_used", "locality"])
def test_several_engines_share_the_work_and_the_process_table(
    chain: Chain, small_profile: EngineProfile, balancer: str
) -> None:
    programs = _mixed_load(chain)
    sim = Simulation(
        programs,
        small_profile,
        SchedulerConfig(policy="plas"),
        SimConfig(engines=3, balancer=balancer, locality_threshold=200),
    )  # type: ignore[arg-type]
    result = sim.run()
    assert result.programs == len(programs)
    assert all(e.counters.steps > 0 for e in sim.engines.values())
    # One process table for all engines and the balancer; finished programs left it.
    tables = {id(e.scheduler.table) for e in sim.engines.values()} | {id(sim.balancer.table)}
    assert len(tables) == 1
    assert len(sim.table) == 0
    assert all(sim.balancer.load(eid) == 0 for eid in sim.engines)


def test_locality_keeps_a_long_program_on_its_engine(
    chain: Chain, small_profile: EngineProfile
) -> None:
    # Prompts above the threshold go to the engine the program was pinned to: its history is cached there.
    programs = [chain(f"p{i}", [(300, 30 + 7 * i)] * 5, arrival=0.05 * i) for i in range(4)]
    config = SchedulerConfig(policy="plas")
    local = simulate(
        programs,
        small_profile,
        config,
        SimConfig(engines=3, balancer="locality", locality_threshold=100),
    )
    spread = simulate(programs, small_profile, config, SimConfig(engines=3, balancer="round_robin"))
    assert local.engines.prefix_hit_rate > spread.engines.prefix_hit_rate


def test_the_auto_service_unit_resolves_for_the_profiled_device(
    small_profile: EngineProfile,
) -> None:
    # As on the engine it models: tokens for a CPU engine's profile, model time for a GPU's.
    auto = SchedulerConfig(policy="plas")
    cpu = msgspec.structs.replace(small_profile, device="cpu")
    assert Simulation([], cpu, auto).scheduler_config.service_unit == "tokens"
    gpu = msgspec.structs.replace(small_profile, device="cuda")
    assert Simulation([], gpu, auto).scheduler_config.service_unit == "time"


def test_the_oracles_rank_by_what_no_scheduler_knows(chain: Chain, small_profile: EngineProfile) -> None:
    """``remaining`` runs the program with the fewest decode tokens left first; ``kind`` the
    programs of the kind that is shorter on average, in the policy's order within a kind."""
    programs = _mixed_load(chain)
    fcfs = SchedulerConfig(policy="fcfs")
    alone = simulate(programs, small_profile, fcfs)
    remaining = simulate(programs, small_profile, fcfs, SimConfig(oracle="remaining"))
    by_kind = simulate(programs, small_profile, fcfs, SimConfig(oracle="kind"))
    for oracle in (remaining, by_kind):
        assert oracle.programs == len(programs)
        assert oracle.latency_by_kind["short"].mean < 0.5 * alone.latency_by_kind["short"].mean
    # One kind of unequal programs: its kind tells nothing (the policy's order, the same run);
    # what each has left puts the short ones first.
    unequal = [
        chain(f"p{i}", [(60, 40 + 160 * (i % 3))] * (1 + i % 4), kind="one", arrival=0.05 * i)
        for i in range(16)
    ]
    alone = simulate(unequal, small_profile, fcfs)
    assert simulate(unequal, small_profile, fcfs, SimConfig(oracle="kind")).latency == alone.latency
    assert simulate(unequal, small_profile, fcfs, SimConfig(oracle="remaining")).latency.mean < 0.8 * alone.latency.mean
