"""ProgramAccounting: admitting a call and retiring it with its wait, service and outcome."""

from __future__ import annotations

import pytest

from agentrt.scheduling import (
    Call,
    CallOutcome,
    ProcessTable,
    ProgramAccounting,
    SchedulerConfig,
    make_policy,
)

FINISHED = CallOutcome.FINISHED


def accounting(policy: str | None = "atlas") -> ProgramAccounting:
    boundaries = SchedulerConfig(service_unit="tokens").boundaries  # 256, 512, ...
    return ProgramAccounting(ProcessTable(), make_policy(policy) if policy else None, boundaries)


def served(call_id: str, service: float, program_id: str = "p") -> Call:
    call = Call(call_id, program_id)
    call.service = service
    return call


def test_an_admitted_call_takes_its_programs_priority_and_level() -> None:
    acc = accounting()
    first = Call("c1", "p", thread_id="t0")
    entry, record = acc.admit(first, 0.0)
    assert (first.start_value, first.level, record.level) == (0.0, 0, 0)
    assert (record.call_id, record.thread_id, record.outcome) == ("c1", "t0", CallOutcome.LIVE)
    first.service = 300.0
    assert acc.retire(first, 1.0, wait=2.0, outcome=FINISHED) is entry
    assert (entry.service, entry.total_service, entry.wait) == (300.0, 300.0, 2.0)
    second = Call("c2", "p")
    _, record = acc.admit(second, 2.0)
    assert (second.start_value, second.level, record.level) == (300.0, 1, 1)


@pytest.mark.parametrize(("policy", "expected"), [("atlas", 100.0), ("plas", 160.0)])
def test_atlas_keeps_the_critical_path_and_plas_the_sum(policy: str, expected: float) -> None:
    acc = accounting(policy)
    calls = [served("c0", 100.0), served("c1", 60.0)]
    for call in calls:
        acc.admit(call, 0.0)
    for call in calls:
        acc.retire(call, 1.0, wait=0.0, outcome=FINISHED)
    entry = acc.table.get("p")
    assert entry is not None and entry.service == expected and entry.total_service == 160.0


def test_a_retired_record_keeps_its_wait_service_level_and_outcome() -> None:
    acc = accounting()
    call = Call("c1", "p")
    entry, _ = acc.admit(call, 0.0)
    call.level, call.service = 3, 7.0
    acc.retire(call, 5.0, wait=1.5, outcome=CallOutcome.ABORTED)
    record = entry.recent[-1]
    assert (record.wait, record.service, record.level) == (1.5, 7.0, 3)
    assert (record.outcome, record.finished) == ("aborted", 5.0)
    assert not entry.live


def test_without_a_policy_only_the_records_and_totals_are_kept() -> None:
    acc = accounting(None)
    call = served("c1", 4.0)
    call.start_value = 9.0
    entry, record = acc.admit(call, 0.0)
    assert (call.start_value, record.level) == (9.0, 0)
    acc.retire(call, 1.0, wait=0.5, outcome=FINISHED)
    assert (entry.service, entry.total_service, entry.wait) == (0.0, 4.0, 0.5)


def test_retiring_an_unknown_program_or_call_changes_nothing() -> None:
    acc = accounting(None)
    assert acc.retire(served("c", 1.0, "nope"), 1.0, wait=1.0, outcome=FINISHED) is None
    acc.table.start("p", 0.0)
    entry = acc.retire(served("c", 1.0), 1.0, wait=1.0, outcome=FINISHED)
    assert entry is not None and entry.total_service == 0.0 and not entry.recent


def test_credit_raises_a_programs_service_to_what_it_received_elsewhere() -> None:
    acc = accounting()
    assert acc.credit("p", 40.0, 0.0).service == 40.0
    assert acc.credit("p", 10.0, 1.0).service == 40.0
    call = Call("c", "p")
    acc.admit(call, 2.0)
    assert call.start_value == 40.0


@pytest.mark.parametrize("outcome", list(CallOutcome))
def test_outcomes_read_as_their_wire_strings(outcome: CallOutcome) -> None:
    assert outcome == outcome.value and f"{outcome}" == outcome.value
