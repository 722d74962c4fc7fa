"""The process table: program lifecycle, bounded memory, idle expiry, records, engine pins."""

from __future__ import annotations

import pytest
from tests.unit.scheduling.admissions import SlotAdmission

from agentrt.scheduling import Call, CallOutcome, ProcessTable, SchedulerConfig, make_scheduler


def test_a_program_is_created_on_start_or_on_its_first_call() -> None:
    table = ProcessTable()
    started = table.start("p", 1.0)
    assert table.get("p") is started and started.created == 1.0
    entry, record = table.call_started("q", "q.0", "t", 2.0)
    assert "q" in table and entry.live == {"q.0": record} and entry.last_arrival == 2.0
    assert table.start("p", 3.0) is started  # starting again keeps the entry


def test_end_drops_an_idle_program_at_once() -> None:
    table = ProcessTable()
    table.start("p", 0.0)
    assert table.end("p", 1.0) is True
    assert "p" not in table and len(table) == 0
    assert table.end("p", 1.0) is False


def test_end_with_live_calls_drops_the_program_with_its_last_call() -> None:
    sched = make_scheduler(SchedulerConfig(service_unit="tokens"))
    sched.add(Call("a", "p"), 0.0)
    sched.add(Call("b", "p"), 0.0)
    sched.table.end("p", 1.0)
    assert "p" in sched.table
    sched.finish("a", 2.0)
    assert "p" in sched.table
    sched.abort("b", 3.0)
    assert "p" not in sched.table


def test_idle_programs_expire_after_the_ttl_but_busy_ones_never_do() -> None:
    table = ProcessTable(ttl=10.0)
    table.start("idle", 0.0)
    table.call_started("busy", "busy.0", "", 0.0)
    table.start("recent", 5.0)
    assert table.expire(9.9) == []
    assert table.expire(10.0) == ["idle"]
    assert table.expire(100.0) == ["recent"]
    assert "busy" in table


def test_activity_postpones_expiry() -> None:
    table = ProcessTable(ttl=10.0)
    table.start("p", 0.0)
    table.record_interrupt("p", 2.0, 8.0)
    assert table.expire(12.0) == []
    assert table.expire(18.0) == ["p"]


def test_new_programs_expire_stale_ones_on_the_way() -> None:
    table = ProcessTable(ttl=10.0)
    table.start("old", 0.0)
    table.start("new", 50.0)
    assert "old" not in table


def test_a_flood_of_one_call_programs_that_never_end_stays_bounded() -> None:
    sched = make_scheduler(SchedulerConfig(service_unit="tokens", max_programs=100))
    for i in range(5000):
        call = sched.add(Call(f"c{i}", f"prog{i}"), float(i))
        sched.schedule(float(i), SlotAdmission(1))
        sched.charge(call, 1, float(i))
        sched.finish(call.call_id, float(i))
        assert len(sched.table) <= 100
    # The most recently active programs are the ones kept.
    assert "prog4999" in sched.table and "prog0" not in sched.table


def test_programs_with_live_calls_are_never_evicted() -> None:
    table = ProcessTable(max_programs=2)
    table.call_started("a", "a.0", "", 0.0)
    table.call_started("b", "b.0", "", 1.0)
    table.call_started("c", "c.0", "", 2.0)  # over the bound: nothing idle to evict
    assert len(table) == 3
    table.start("d", 3.0)
    assert len(table) == 4
    entry = table.get("a")
    assert entry is not None
    entry.live["a.0"].service = 1.0
    table.call_ended("a", "a.0", 4.0, CallOutcome.FINISHED)  # back to idle: trimmed to the bound
    assert len(table) <= 3 and {"b", "c"} <= {e.program_id for e in table.programs()}


def test_evicts_the_least_recently_active_idle_program() -> None:
    table = ProcessTable(max_programs=3)
    for i, name in enumerate("abc"):
        table.start(name, float(i))
    table.record_interrupt("a", 0.5, 3.0)  # a is now the most recent
    table.start("d", 4.0)
    assert sorted(e.program_id for e in table.programs()) == ["a", "c", "d"]


def test_call_records_per_program_are_bounded() -> None:
    sched = make_scheduler(SchedulerConfig(service_unit="tokens", max_call_records=4))
    for i in range(20):
        call = sched.add(Call(f"c{i}", "p"), float(i))
        sched.schedule(float(i), SlotAdmission(1))
        sched.charge(call, 2, float(i))
        sched.finish(call.call_id, float(i))
    entry = sched.table.get("p")
    assert entry is not None
    assert [r.call_id for r in entry.records()] == ["c16", "c17", "c18", "c19"]
    assert entry.total_service == 40  # totals still count every call


def test_records_hold_arrival_wait_service_level_and_interrupts() -> None:
    sched = make_scheduler(
        SchedulerConfig(policy="plas", service_unit="tokens", num_queues=3, first_quantum=2)
    )
    call = sched.add(Call("a", "p", thread_id="main"), 0.0)
    sched.add(Call("x", "x"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(sched.get("a"), 3, 0.0)  # type: ignore[arg-type]
    live = sched.table.get("p").live["a"]  # type: ignore[union-attr]
    assert (live.arrival, live.service, live.level, live.outcome) == (0.0, 3, 1, "live")
    sched.finish("a", 1.0)
    assert sched.table.record_interrupt("p", 4.5, 2.0, call_id="a")
    record = sched.table.get("p").recent[-1]  # type: ignore[union-attr]
    assert (record.interrupt_time, record.finished, record.thread_id) == (4.5, 1.0, "main")
    assert sched.table.get("p").interrupt_time == 4.5  # type: ignore[union-attr]
    assert call.level == 1
    assert not sched.table.record_interrupt("unknown", 1.0, 2.0)
    with pytest.raises(ValueError):
        sched.table.record_interrupt("p", -1.0, 2.0)


def test_a_shared_table_sees_service_from_every_scheduler() -> None:
    table = ProcessTable()
    config = SchedulerConfig(policy="atlas", service_unit="tokens")
    engine_a, engine_b = make_scheduler(config, table), make_scheduler(config, table)
    call = engine_a.add(Call("p.0", "p"), 0.0)
    engine_a.schedule(0.0, SlotAdmission(1))
    engine_a.charge(call, 300, 0.0)
    engine_a.finish("p.0", 0.0)
    assert engine_b.add(Call("p.1", "p"), 1.0).start_value == 300


def test_invalid_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        ProcessTable(ttl=0)
    with pytest.raises(ValueError):
        ProcessTable(max_programs=0)
