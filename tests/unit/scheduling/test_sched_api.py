"""The public surface: every policy runs the driver loop of the package docstring."""

from __future__ import annotations

import pytest
from tests.unit.scheduling.admissions import SlotAdmission

from agentrt.scheduling import POLICIES, Call, SchedulerConfig, make_scheduler


@pytest.mark.parametrize("policy", POLICIES)
def test_every_policy_runs_calls_to_completion(policy: str) -> None:
    sched = make_scheduler(SchedulerConfig(policy=policy, service_unit="tokens"))  # type: ignore[arg-type]
    for i in range(6):
        sched.add(Call(f"c{i}", f"p{i % 3}", prompt_tokens=8), now=0.0)
    remaining = {f"c{i}": 5 + i for i in range(6)}
    step = 0
    while remaining:
        step += 1
        decision = sched.schedule(step, SlotAdmission(2))
        assert len(decision.batch) == 2 or len(decision.batch) == len(remaining)
        for call in decision.batch:
            sched.charge(call, 1, step)
            remaining[call.call_id] -= 1
            if remaining[call.call_id] == 0:
                del remaining[call.call_id]
                assert sched.finish(call.call_id, step) is call
        assert step < 1000
    assert len(sched) == 0
    assert sched.running == []
    for program in sched.table.programs():
        assert not program.live
        assert program.total_service == sum(r.service for r in program.recent)
