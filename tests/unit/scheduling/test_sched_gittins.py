"""The Gittins index policy: the index itself, the learned table, and the order it gives."""

from __future__ import annotations

import random
from itertools import accumulate

import pytest
from tests.unit.scheduling.admissions import SlotAdmission
from tests.unit.scheduling.harness import ProgramSpec, run_programs, scheduler_for

from agentrt.scheduling import Call, Scheduler, SchedulerConfig
from agentrt.scheduling.gittins import ProgramSizes, gittins_index


def brute_force_index(sizes: list[float], attained: float) -> float:
    """The definition, evaluated at every remaining size as the horizon."""
    left = [s - attained for s in sizes if s > attained]
    return max(sum(r <= d for r in left) / sum(min(r, d) for r in left) for d in left)


@pytest.mark.parametrize("seed", range(5))
def test_the_index_matches_its_definition(seed: int) -> None:
    rng = random.Random(seed)
    sizes = sorted(float(rng.choice([1, 2, 5, 40, 300]) * rng.uniform(0.5, 2)) for _ in range(60))
    sizes[5] = sizes[6]  # ties finish together
    prefix = [0.0, *accumulate(sizes)]
    for attained in (0.0, 1.0, 3.0, sizes[30], 100.0):
        assert gittins_index(sizes, prefix, attained) == pytest.approx(
            brute_force_index(sizes, attained)
        )


def test_equal_sizes_give_an_index_that_rises_and_a_long_tail_one_that_falls() -> None:
    alike, tailed = ProgramSizes(64, 8), ProgramSizes(64, 8)
    for i in range(40):
        alike.observe(100.0 + i)
        tailed.observe(1.0 if i % 10 else 400.0)
    assert alike.refresh() and tailed.refresh()
    assert alike.index(0) < alike.index(50) < alike.index(99)
    # past the short ones a program is one of the long ones: 399 more to go
    assert tailed.index(0) > 10 * tailed.index(2)
    assert tailed.index(2) == pytest.approx(1 / 399)


def test_the_table_waits_for_enough_programs_and_rebuilds_only_on_news() -> None:
    sizes = ProgramSizes(window=4, min_programs=3)
    sizes.observe(10.0)
    sizes.observe(0.0)  # a program that received nothing says nothing about sizes
    sizes.observe(12.0)
    assert not sizes.refresh() and not sizes.ready
    sizes.observe(14.0)
    assert sizes.refresh() and sizes.ready
    assert not sizes.refresh()
    for _ in range(4):
        sizes.observe(1000.0)  # the window keeps the last four
    sizes.refresh()
    assert len(sizes) == 4 and sizes.index(0) == pytest.approx(1 / 1000)


def test_the_config_rejects_a_window_smaller_than_its_minimum() -> None:
    with pytest.raises(ValueError, match="gittins_min_programs"):
        SchedulerConfig(policy="gittins", gittins_window=4, gittins_min_programs=5)


def learn(sched_sizes: list[int], **overrides: object) -> Scheduler:
    """A token-mode Gittins scheduler that has seen programs of ``sched_sizes`` tokens end."""
    sched = scheduler_for("gittins", gittins_min_programs=len(sched_sizes), **overrides)
    for i, size in enumerate(sched_sizes):
        sched.add(Call(f"seen{i}", f"seen{i}"), 0.0)
        sched.schedule(0.0, _One())
        sched.charge(sched.get(f"seen{i}"), size, 0.0)  # type: ignore[arg-type]
        sched.finish(f"seen{i}", 0.0)
        sched.table.end(f"seen{i}", 0.0)
    sched.schedule(0.0, _One())  # builds the table
    return sched


class _One:
    def admit(self, call: Call) -> bool:
        return True


def test_with_alike_sizes_the_program_nearest_done_runs_first() -> None:
    sched = learn([100, 100, 110, 120, 90, 100])
    sched.add(Call("young", "young"), 1.0)
    old = sched.add(Call("old", "old"), 1.0)
    old.start_value = 80.0  # its program has received 80 of about 100
    sched._rekey_all()
    assert [c.call_id for c in sched.calls()] == ["old", "young"]


def test_with_a_long_tail_the_program_that_ran_longest_waits() -> None:
    sched = learn([2, 2, 2, 2, 2, 2, 2, 500])
    old = sched.add(Call("old", "old"), 1.0)
    old.start_value = 10.0  # past every short program: likely the long one
    sched.add(Call("young", "young"), 1.0)
    sched._rekey_all()
    assert [c.call_id for c in sched.calls()] == ["young", "old"]


def test_on_programs_of_one_size_gittins_beats_plas_on_the_mean() -> None:
    # Sequential programs of 4 calls x 5 tokens, four at a time every 90 steps (load 0.9),
    # one call per step: calls taking turns share the engine among the four, Gittins
    # (once it has seen four end) finishes the one furthest along first.
    programs = [ProgramSpec(f"p{i}", [[5]] * 4, arrival=i // 4 * 90) for i in range(40)]
    common = {"service_unit": "tokens", "gittins_min_programs": 4}

    def mean(policy: str) -> float:
        trace = run_programs(SchedulerConfig(policy=policy, **common), programs, 1)  # type: ignore[arg-type]
        return sum(trace.latency(p) for p in programs) / len(programs)

    assert mean("gittins") < 0.8 * mean("plas")
    assert mean("gittins") <= mean("fcfs")


@pytest.mark.parametrize(("hold", "preempted"), [(1.0, []), (0.0, ["old"])])
def test_a_running_call_yields_only_to_an_index_beyond_the_hold(
    hold: float, preempted: list[str]
) -> None:
    # Sizes 2 (x3) and 10 (x5): a new program's index is 3/16, one past 3 of service is
    # a long one with about 7 to go, index about 1/7: higher, but not twice as high.
    sched = learn([2, 2, 2, 10, 10, 10, 10, 10], gittins_hold=hold)
    sched.add(Call("old", "old"), 1.0)
    assert [c.call_id for c in sched.schedule(1.0, SlotAdmission(1)).batch] == ["old"]
    sched.charge(sched.get("old"), 3, 1.0)  # type: ignore[arg-type]
    sched.add(Call("new", "new"), 1.0)
    sizes = sched.policy.sizes  # type: ignore[attr-defined]
    assert sizes.index(3) < sizes.index(0) < 2 * sizes.index(3)
    decision = sched.schedule(2.0, SlotAdmission(1))
    assert [c.call_id for c in decision.preempted] == preempted


def test_a_long_program_behind_new_ones_is_promoted_once_it_has_starved() -> None:
    # The long program has 10 tokens of service, the median size is 2: it starves after
    # waiting beta * 10 = 20 steps behind the short new programs the index prefers.
    sched = learn([2, 2, 2, 2, 2, 2, 2, 500], beta=2.0)
    sched.add(Call("long.0", "long"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(sched.get("long.0"), 10, 0.0)  # type: ignore[arg-type]
    sched.finish("long.0", 0.0)
    long_call = sched.add(Call("long.1", "long"), 0.0)
    promoted_at = None
    for step in range(1, 40):
        sched.add(Call(f"new{step}", f"new{step}"), float(step))
        decision = sched.schedule(float(step), SlotAdmission(1))
        if long_call in decision.promoted:
            promoted_at = step
            assert [c.call_id for c in decision.batch] == ["long.1"]
            break
        assert [c.call_id for c in decision.batch] == [f"new{step}"]
        sched.charge(decision.batch[0], 1, float(step))
        sched.finish(f"new{step}", float(step))
    assert promoted_at is not None and 19 <= promoted_at <= 22


def test_kv_retention_weighs_a_pin_by_the_programs_index() -> None:
    from agentrt.scheduling.retention import policy_priority

    sched = learn([2, 2, 2, 10, 10, 10, 10, 10])
    for name, service in (("near_done", 9.0), ("long_one", 3.0)):
        sched.add(Call(f"{name}.0", name), 1.0)
        sched.schedule(1.0, _One())
        sched.charge(sched.get(f"{name}.0"), service, 1.0)  # type: ignore[arg-type]
        sched.finish(f"{name}.0", 1.0)
    rank = policy_priority(sched)
    # one unit from the end of a size-10 program ranks ahead of one with 7 to go
    assert rank("near_done") < rank("long_one") < 0
    assert rank("near_done") == -sched.policy.sizes.index(9.0)  # type: ignore[attr-defined]
