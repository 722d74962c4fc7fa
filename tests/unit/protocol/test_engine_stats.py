"""EngineStats.plus: two engines' stats read as one."""

from __future__ import annotations

import msgspec

from agentrt.protocol.engine import EngineStats, StepMoments, StepRecord


def test_counts_add_and_ratios_follow_the_summed_pools() -> None:
    a = EngineStats(running=2, waiting=1, swapped=1, kv_blocks_total=100, kv_blocks_used=50)
    a.prefix_hit_rate, a.preemptions_swap, a.preemptions_recompute = 0.8, 3, 1
    a.steps, a.generated_tokens, a.calls_per_level = 10, 40, [2, 1, 1]
    a.step_moments = StepMoments.of(StepRecord(8, 2, 30, 0.01))
    a.kv_admissions_held, a.kv_admissions_held_seconds = 2, 1.5
    b = EngineStats(running=1, kv_blocks_total=300, kv_blocks_used=30, prefix_hit_rate=0.4)
    b.kv_admissions_held, b.kv_admissions_held_seconds = 1, 0.25
    b.steps, b.generated_tokens, b.calls_per_level = 5, 7, [1]
    b.step_moments = StepMoments.of(StepRecord(0, 1, 12, 0.002))
    total = a.plus(b)
    assert (total.running, total.waiting, total.swapped) == (3, 1, 1)
    assert (total.kv_blocks_total, total.kv_blocks_used) == (400, 80)
    assert total.kv_usage == 80 / 400
    assert total.prefix_hit_rate == (0.8 * 100 + 0.4 * 300) / 400
    assert (total.preemptions_swap, total.preemptions_recompute) == (3, 1)
    assert (total.steps, total.generated_tokens) == (15, 47)
    assert total.calls_per_level == [3, 1, 1]
    assert (total.kv_admissions_held, total.kv_admissions_held_seconds) == (3, 1.75)
    assert total.step_moments == a.step_moments.plus(b.step_moments)


def test_every_count_field_is_summed() -> None:
    ones = EngineStats(
        **{
            name: 1
            for name in EngineStats.__struct_fields__
            if isinstance(getattr(EngineStats(), name), int)
        }
    )
    total = EngineStats().plus(ones).plus(ones)
    for name, value in msgspec.structs.asdict(total).items():
        if isinstance(getattr(ones, name), int):
            assert value == 2, name


def test_the_empty_stats_are_the_identity() -> None:
    a = EngineStats(running=4, kv_blocks_total=10, kv_blocks_used=5, prefix_hit_rate=0.25)
    total = EngineStats().plus(a)
    assert total.running == 4 and total.kv_usage == 0.5 and total.prefix_hit_rate == 0.25
