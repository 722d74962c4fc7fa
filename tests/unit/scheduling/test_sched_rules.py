"""The scheduler's rules, one at a time, on hand-checked examples (token mode: 1 step = 1 token)."""

from __future__ import annotations

import pytest
from tests.unit.scheduling.admissions import SlotAdmission, TokenAdmission
from tests.unit.scheduling.harness import scheduler_for

from agentrt.scheduling import Call, Scheduler, SchedulerConfig, make_scheduler, queue_level

INF = float("inf")


def ids(calls: list[Call]) -> list[str]:
    return [c.call_id for c in calls]


def give_program_service(sched_policy: str, service: float, **overrides: object) -> Scheduler:
    """A scheduler whose program "old" has already completed one call of ``service`` tokens."""
    sched = scheduler_for(sched_policy, **overrides)
    sched.add(Call("old.0", "old"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(sched.get("old.0"), service, 0.0)  # type: ignore[arg-type]
    sched.finish("old.0", 0.0)
    return sched


# --- FCFS and LAS ---


def test_fcfs_runs_in_arrival_order_and_new_calls_do_not_preempt() -> None:
    sched = scheduler_for("fcfs")
    for i in range(3):
        sched.add(Call(f"c{i}", f"p{i}"), 0.0)
    assert ids(sched.schedule(0.0, SlotAdmission(2)).batch) == ["c0", "c1"]
    sched.add(Call("c3", "p3"), 0.0)
    decision = sched.schedule(1.0, SlotAdmission(2))
    assert ids(decision.batch) == ["c0", "c1"]
    assert decision.preempted == []


def test_las_runs_the_call_with_least_service_and_preempts_the_others() -> None:
    sched = scheduler_for("las")
    sched.add(Call("a", "p"), 0.0)
    sched.add(Call("b", "q"), 0.0)
    first = sched.schedule(0.0, SlotAdmission(1))
    assert ids(first.batch) == ["a"]
    sched.charge(first.batch[0], 1, 0.0)
    second = sched.schedule(1.0, SlotAdmission(1))
    assert ids(second.batch) == ["b"]
    assert ids(second.preempted) == ["a"]


# --- queue levels on arrival ---


@pytest.mark.parametrize(
    ("service", "level"), [(0, 0), (3, 0), (4, 1), (7, 1), (8, 2), (15, 2), (16, 3), (10_000, 3)]
)
def test_plas_call_enters_the_level_its_program_priority_falls_in(service: int, level: int) -> None:
    sched = give_program_service("plas", service, num_queues=4, first_boundary=4, first_quantum=100)
    call = sched.add(Call("old.1", "old"), 1.0)
    assert call.start_value == service
    assert call.level == level
    assert call.quantum == 100 * 2**level


def test_mlfq_call_enters_the_top_level_whatever_its_program_did() -> None:
    sched = give_program_service("mlfq", 50, num_queues=4, first_boundary=4)
    call = sched.add(Call("old.1", "old"), 1.0)
    assert call.level == 0
    assert call.start_value == 0


def test_higher_level_runs_first_and_fcfs_inside_a_level() -> None:
    sched = give_program_service("plas", 10, num_queues=4, first_boundary=4, first_quantum=100)
    sched.add(Call("old.1", "old"), 1.0)  # level 2, arrived first
    sched.add(Call("new.0", "new"), 1.0)  # level 0
    sched.add(Call("new2.0", "new2"), 1.0)  # level 0, arrived later
    assert ids(list(sched.calls())) == ["new.0", "new2.0", "old.1"]
    assert ids(sched.schedule(1.0, SlotAdmission(3)).batch) == ["new.0", "new2.0", "old.1"]


@pytest.mark.parametrize(
    ("policy", "level_order", "order"),
    [
        ("plas", "program", ["early.1", "late.0"]),
        ("atlas", "program", ["early.1", "late.0"]),
        ("plas", "call", ["late.0", "early.1"]),
        ("plas", None, ["late.0", "early.1"]),  # the default: by call
        ("mlfq", "program", ["late.0", "early.1"]),  # not program-aware: by call
    ],
)
def test_by_program_inside_a_level_the_earlier_program_goes_first(
    policy: str, level_order: str | None, order: list[str]
) -> None:
    """By program, a sequential program's next call does not queue behind programs that came after it."""
    options = {} if level_order is None else {"level_order": level_order}
    sched = scheduler_for(policy, num_queues=2, first_boundary=100, **options)
    sched.add(Call("early.0", "early"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(sched.get("early.0"), 5, 0.0)  # type: ignore[arg-type]
    sched.add(Call("late.0", "late"), 1.0)  # arrives while early.0 runs
    sched.finish("early.0", 2.0)
    sched.add(Call("early.1", "early"), 2.0)  # its program's next call, same level
    assert sched.get("early.1").level == sched.get("late.0").level == 0  # type: ignore[union-attr]
    assert ids(list(sched.calls())) == order
    assert ids(sched.schedule(2.0, SlotAdmission(1)).batch) == order[:1]


# --- demotion ---


def test_call_is_demoted_when_its_quantum_is_used_up() -> None:
    sched = scheduler_for("plas", num_queues=3, first_boundary=100, first_quantum=2, beta=INF)
    call = sched.add(Call("a", "p"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(call, 1, 0.0)
    assert (call.level, call.quantum) == (0, 1)
    sched.charge(call, 1, 1.0)
    assert (call.level, call.quantum) == (1, 4)  # quanta grow: 2, 4, 8
    sched.charge(call, 4, 2.0)
    assert (call.level, call.quantum) == (2, 8)
    sched.charge(call, 100, 3.0)
    assert call.level == 2  # the bottom level keeps it
    assert call.service == 106


def test_one_large_charge_demotes_through_several_levels() -> None:
    sched = scheduler_for("mlfq", num_queues=4, first_quantum=2, beta=INF)
    call = sched.add(Call("a", "p"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(call, 7, 0.0)  # a 7-token prefill chunk: 2 (level 0) + 4 (level 1) + 1 of 8
    assert (call.level, call.quantum) == (2, 7)


def test_demoted_running_call_is_preempted_by_a_waiting_call_of_a_higher_level() -> None:
    sched = scheduler_for("mlfq", num_queues=3, first_quantum=1, beta=INF)
    a = sched.add(Call("a", "p"), 0.0)
    sched.add(Call("b", "q"), 0.0)
    assert ids(sched.schedule(0.0, SlotAdmission(1)).batch) == ["a"]
    sched.charge(a, 1, 0.0)
    decision = sched.schedule(1.0, SlotAdmission(1))
    assert ids(decision.batch) == ["b"]
    assert ids(decision.preempted) == ["a"]
    assert not a.running


# --- preemption keeps the place ---


def test_preempted_call_keeps_its_place_ahead_of_later_arrivals() -> None:
    sched = scheduler_for("fcfs")
    sched.add(Call("a", "p"), 0.0)
    sched.add(Call("b", "q"), 0.0)
    assert ids(sched.schedule(0.0, SlotAdmission(2)).batch) == ["a", "b"]
    # The KV budget shrinks: only one call fits; the later arrival is preempted.
    decision = sched.schedule(1.0, SlotAdmission(1))
    assert ids(decision.batch) == ["a"]
    assert ids(decision.preempted) == ["b"]
    sched.add(Call("c", "r"), 1.0)
    # Room again: the preempted call comes back before the newer one.
    assert ids(sched.schedule(2.0, SlotAdmission(2)).batch) == ["a", "b"]


def test_preempted_calls_are_reported_in_priority_order() -> None:
    sched = scheduler_for("fcfs")
    for name in "abcd":
        sched.add(Call(name, name), 0.0)
    sched.schedule(0.0, SlotAdmission(4))
    decision = sched.schedule(1.0, SlotAdmission(1))
    assert ids(decision.preempted) == ["b", "c", "d"]


# --- batch formation ---


def test_batch_formation_stops_at_the_first_call_that_does_not_fit() -> None:
    sched = scheduler_for("fcfs")
    context = {"a": 10, "big": 100, "small": 1}
    for name in context:
        sched.add(Call(name, name, prompt_tokens=context[name]), 0.0)
    admission = TokenAdmission(capacity=50, max_batch=8, context=context)
    decision = sched.schedule(0.0, admission)
    assert ids(decision.batch) == ["a"]  # "small" would fit but must not skip ahead of "big"
    assert admission.refused == "big"
    assert admission.admitted == ["a"]


def test_admission_is_asked_in_priority_order_and_not_past_the_refusal() -> None:
    sched = give_program_service("plas", 10, num_queues=4, first_boundary=4)
    sched.add(Call("old.1", "old"), 1.0)
    sched.add(Call("x", "x"), 1.0)
    sched.add(Call("y", "y"), 1.0)
    admission = SlotAdmission(1)
    sched.schedule(1.0, admission)
    assert admission.asked == ["x", "y"]


# --- waits ---


def test_waits_count_steps_in_token_mode() -> None:
    sched = scheduler_for("fcfs")
    a = sched.add(Call("a", "p"), 0.0)
    b = sched.add(Call("b", "q"), 0.0)
    for step in range(3):
        sched.schedule(float(step), SlotAdmission(1))
        sched.charge(a, 1, float(step))
    sched.finish("a", 2.0)
    assert ids(sched.schedule(3.0, SlotAdmission(1)).batch) == ["b"]
    assert b.wait(sched.clock(3.0)) == 3
    assert a.wait(sched.clock(3.0)) == 0


def test_waits_count_seconds_in_time_mode() -> None:
    sched = make_scheduler(SchedulerConfig(policy="fcfs"))
    a = sched.add(Call("a", "p"), 10.0)
    b = sched.add(Call("b", "q"), 10.5)
    sched.schedule(11.0, SlotAdmission(1))
    sched.charge(a, 0.25, 11.25)
    sched.finish("a", 11.25)
    sched.schedule(11.25, SlotAdmission(1))
    assert a.wait(11.25) == pytest.approx(1.0)
    assert b.wait(20.0) == pytest.approx(0.75)
    record = sched.table.get("p").recent[-1]  # type: ignore[union-attr]
    assert (record.wait, record.service, record.outcome) == (pytest.approx(1.0), 0.25, "finished")


# --- anti-starvation ---


def test_waiting_call_is_promoted_when_the_ratio_reaches_beta() -> None:
    # Program "long" has T_p = 8 (one earlier call), W_p = 0. Its new call waits
    # at level 2 behind a stream of level-0 calls. beta = 2: promoted once
    # (0 + W_c) / (8 + 0) >= 2, i.e. after 16 steps of waiting.
    sched = give_program_service("plas", 8, num_queues=4, first_boundary=4, beta=2.0)
    victim = sched.add(Call("old.1", "old"), 1.0)
    assert victim.level == 2
    hog = sched.add(Call("hog", "hog"), 1.0)
    promoted_at = None
    for step in range(1, 40):
        decision = sched.schedule(float(step), SlotAdmission(1))
        if decision.promoted:
            promoted_at = step
            break
        assert ids(decision.batch) == ["hog"]
        sched.charge(hog, 0, float(step))  # hog stays in the top level (no service charged)
    assert promoted_at is not None
    assert victim.wait(sched.clock(float(promoted_at))) == 16
    assert victim.level == 0
    assert victim.wait_c(sched.clock(float(promoted_at))) == 0  # the call's W resets...
    assert victim.service_c == 0
    entry = sched.table.get("old")
    assert entry is not None and entry.service == 8  # ...the program's T stays


def test_a_promoted_call_stays_in_the_top_level_until_it_ends() -> None:
    # Promoted, "old.1" runs ahead of every newer call for as long as it runs: a
    # quantum's service no longer demotes it. Its program's next call enters at
    # the program's own level again.
    sched = give_program_service("plas", 8, num_queues=4, first_boundary=4, first_quantum=1, beta=2.0)
    victim = sched.add(Call("old.1", "old"), 1.0)
    hog = sched.add(Call("hog", "hog"), 1.0)
    step = 1
    while not sched.schedule(float(step), SlotAdmission(1)).promoted:
        sched.charge(hog, 0, float(step))
        step += 1
    for later in range(step, step + 10):
        sched.add(Call(f"new{later}", f"new{later}"), float(later))
        assert ids(sched.schedule(float(later), SlotAdmission(1)).batch) == ["old.1"]
        sched.charge(victim, 1, float(later))
        assert victim.level == 0
    sched.finish("old.1", float(step + 10))
    assert sched.add(Call("old.2", "old"), float(step + 10)).level == 3  # 8 + 10 of service


def test_promotion_counts_the_programs_earlier_waiting() -> None:
    # Same as above, but the program's first call waited 6 steps: W_p = 6, so the
    # new call needs only 16 - 6 = 10 steps.
    sched = scheduler_for("plas", num_queues=4, first_boundary=4, beta=2.0)
    sched.add(Call("hog0", "hog0"), 0.0)
    first = sched.add(Call("old.0", "old"), 0.0)
    for step in range(6):
        sched.schedule(float(step), SlotAdmission(1))
        sched.charge(sched.get("hog0"), 0, float(step))  # type: ignore[arg-type]
    sched.finish("hog0", 5.0)
    sched.schedule(6.0, SlotAdmission(1))
    sched.charge(first, 8, 6.0)
    sched.finish("old.0", 6.0)
    entry = sched.table.get("old")
    assert entry is not None and (entry.wait, entry.service) == (6, 8)
    victim = sched.add(Call("old.1", "old"), 6.0)
    hog = sched.add(Call("hog", "hog"), 6.0)
    waited = None
    for step in range(7, 40):
        decision = sched.schedule(float(step), SlotAdmission(1))
        if decision.promoted:
            waited = victim.wait(sched.clock(float(step)))
            break
        sched.charge(hog, 0, float(step))
    assert waited == 10


def test_the_floor_bounds_the_ratio_of_a_call_without_service() -> None:
    # MLFQ is not program-aware: ratio = W_c / max(floor, T_c). A call demoted
    # after 1 token: T_c = 1 < floor 3, so with beta 2 it is promoted after 6 steps.
    sched = scheduler_for("mlfq", num_queues=3, first_quantum=1, beta=2.0, starvation_floor=3)
    a = sched.add(Call("a", "a"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(a, 1, 0.0)
    assert a.level == 1
    hog = sched.add(Call("hog", "hog"), 0.0)
    for step in range(1, 20):
        decision = sched.schedule(float(step), SlotAdmission(1))
        if decision.promoted:
            assert ids(decision.promoted) == ["a"]
            assert a.wait(sched.clock(float(step))) == 6
            return
        sched.charge(hog, 0, float(step))
    pytest.fail("never promoted")


def test_infinite_beta_turns_promotion_off() -> None:
    sched = give_program_service("plas", 8, num_queues=4, first_boundary=4, beta=INF)
    sched.add(Call("old.1", "old"), 1.0)
    hog = sched.add(Call("hog", "hog"), 1.0)
    for step in range(1, 200):
        assert sched.schedule(float(step), SlotAdmission(1)).promoted == []
        sched.charge(hog, 0, float(step))


# --- PLAS vs ATLAS on a parallel program ---


@pytest.mark.parametrize(("policy", "service"), [("plas", 2 + 5 + 3), ("atlas", 5)])
def test_plas_sums_parallel_calls_atlas_keeps_the_critical_path(
    policy: str, service: float
) -> None:
    sched = scheduler_for(policy)
    calls = [sched.add(Call(f"t{i}", "p", thread_id=str(i)), 0.0) for i in range(3)]
    sched.schedule(0.0, SlotAdmission(3))
    for call, tokens in zip(calls, [2, 5, 3], strict=True):
        sched.charge(call, tokens, 0.0)
        sched.finish(call.call_id, 0.0)
    entry = sched.table.get("p")
    assert entry is not None
    assert entry.service == service
    assert entry.total_service == 10
    assert sched.add(Call("next", "p"), 1.0).start_value == service


def test_atlas_sibling_calls_share_their_programs_priority() -> None:
    sched = give_program_service("atlas", 20, num_queues=4, first_boundary=4)
    siblings = [sched.add(Call(f"old.t{i}", "old", thread_id=str(i)), 1.0) for i in range(3)]
    assert {c.start_value for c in siblings} == {20}
    assert {c.level for c in siblings} == {3}


# --- explicit request priority ---


@pytest.mark.parametrize(("honor", "order"), [(False, ["a", "b"]), (True, ["b", "a"])])
def test_request_priority_ranks_first_only_when_honoured(honor: bool, order: list[str]) -> None:
    sched = scheduler_for("plas", honor_request_priority=honor)
    sched.add(Call("a", "p", priority=5), 0.0)
    sched.add(Call("b", "q", priority=-1), 0.0)
    assert ids(sched.schedule(0.0, SlotAdmission(2)).batch) == order


# --- multi-step scheduling ---


def test_charges_between_decisions_are_all_accounted() -> None:
    sched = scheduler_for("mlfq", num_queues=3, first_quantum=2, beta=INF)
    a = sched.add(Call("a", "p"), 0.0)
    sched.add(Call("b", "q"), 0.0)
    decision = sched.schedule(0.0, SlotAdmission(1))
    for step in range(4):  # one decision, four engine steps
        for call in decision.batch:
            sched.charge(call, 1, float(step))
    assert (a.service, a.level) == (4, 1)
    assert ids(sched.schedule(4.0, SlotAdmission(1)).batch) == ["b"]
    assert sched.get("b").wait(sched.clock(4.0)) == 4  # type: ignore[union-attr]


def test_a_window_charged_once_counts_every_step_of_waiting() -> None:
    sched = scheduler_for("fcfs")
    a = sched.add(Call("a", "p"), 0.0)
    b = sched.add(Call("b", "q"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(a, 8, 0.2, step=8)  # one charge for an 8-step window
    sched.charge(a, 0, 0.2)  # a second charge at the same time is the same step
    assert sched.clock(0.2) == 8
    sched.finish("a", 0.2)
    sched.schedule(0.2, SlotAdmission(1))
    assert b.wait(sched.clock(0.2)) == 8
    with pytest.raises(ValueError, match="step"):
        sched.charge(b, 1, 0.3, step=-1)


# --- lifecycle and bad input ---


def test_finish_updates_the_process_table_and_forgets_the_call() -> None:
    sched = scheduler_for("atlas")
    call = sched.add(Call("a", "p", thread_id="t0"), 0.0)
    entry = sched.table.get("p")
    assert entry is not None and set(entry.live) == {"a"}
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(call, 3, 0.0)
    assert entry.live["a"].service == 3
    assert sched.finish("a", 1.0) is call
    assert "a" not in sched and len(sched) == 0 and sched.running == []
    assert entry.live == {}
    record = entry.recent[-1]
    assert (record.call_id, record.thread_id, record.service, record.outcome) == (
        "a",
        "t0",
        3,
        "finished",
    )
    assert (entry.last_arrival, entry.last_completion) == (0.0, 1.0)


def test_abort_still_counts_the_service_received() -> None:
    sched = scheduler_for("plas")
    call = sched.add(Call("a", "p"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(call, 7, 0.0)
    assert sched.abort("a", 0.0) is call
    entry = sched.table.get("p")
    assert entry is not None and entry.service == 7 and entry.recent[-1].outcome == "aborted"


def test_unknown_and_repeated_operations_are_harmless() -> None:
    sched = scheduler_for("atlas")
    call = sched.add(Call("a", "p"), 0.0)
    sched.finish("a", 0.0)
    assert sched.finish("a", 0.0) is None
    assert sched.abort("nope", 0.0) is None
    sched.charge(call, 5, 1.0)  # a late charge for a call that left
    entry = sched.table.get("p")
    assert entry is not None and entry.service == 0


def test_bad_input_is_refused_with_a_clear_error() -> None:
    sched = scheduler_for("atlas")
    call = sched.add(Call("a", "p"), 0.0)
    with pytest.raises(ValueError, match="already scheduled"):
        sched.add(Call("a", "p"), 0.0)
    with pytest.raises(ValueError, match="service"):
        sched.charge(call, -1, 0.0)
    with pytest.raises(ValueError, match="service"):
        sched.charge(call, float("nan"), 0.0)
    with pytest.raises(ValueError, match="service"):
        sched.charge(call, float("inf"), 0.0)
    with pytest.raises(ValueError, match="prompt_tokens"):
        Call("b", "p", prompt_tokens=-3)
    assert len(sched) == 1


def test_calls_per_level_counts_live_calls() -> None:
    sched = give_program_service("plas", 10, num_queues=4, first_boundary=4)
    sched.add(Call("old.1", "old"), 1.0)
    sched.add(Call("x", "x"), 1.0)
    sched.add(Call("y", "y"), 1.0)
    assert sched.calls_per_level() == [2, 0, 1, 0]
    assert scheduler_for("fcfs").calls_per_level() == [0]


def test_a_running_call_already_starving_is_promoted_instead_of_preempted() -> None:
    # MLFQ, quantum 1, beta 1.5. "a" waits 2 steps behind x and y, runs one
    # token and drops to level 1: W_c / T_c = 2 / 1 >= 1.5. A new top-level call
    # arrives; "a" is promoted first and keeps its slot (it arrived earlier).
    sched = scheduler_for("mlfq", num_queues=2, first_quantum=1, beta=1.5, starvation_floor=1)
    for name in ("x", "y", "a"):
        sched.add(Call(name, name), 0.0)
    for step, name in enumerate(["x", "y"]):
        assert ids(sched.schedule(float(step), SlotAdmission(1)).batch) == [name]
        sched.charge(sched.get(name), 1, float(step))  # type: ignore[arg-type]
        sched.finish(name, float(step))
    a = sched.get("a")
    assert a is not None
    assert ids(sched.schedule(2.0, SlotAdmission(1)).batch) == ["a"]
    sched.charge(a, 1, 2.0)
    assert a.level == 1
    sched.add(Call("new", "new"), 2.0)
    decision = sched.schedule(3.0, SlotAdmission(1))
    assert ids(decision.promoted) == ["a"]
    assert ids(decision.batch) == ["a"] and decision.preempted == []
    assert (a.level, a.service_c, a.wait_c(sched.clock(3.0))) == (0, 0, 0)


def test_promotion_in_time_mode_counts_seconds() -> None:
    # Program "old" has 1.0 s of service; beta 4: its next call is promoted
    # after 4 s of waiting at level 2 (boundaries 0.5 s and 1 s).
    sched = make_scheduler(
        SchedulerConfig(policy="plas", num_queues=3, first_boundary=0.5, beta=4.0)
    )
    first = sched.add(Call("old.0", "old"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(first, 1.0, 1.0)
    sched.finish("old.0", 1.0)
    victim = sched.add(Call("old.1", "old"), 10.0)
    assert victim.level == 2
    sched.add(Call("hog", "hog"), 10.0)
    assert sched.schedule(13.9, SlotAdmission(1)).promoted == []
    assert ids(sched.schedule(14.0, SlotAdmission(1)).promoted) == ["old.1"]


@pytest.mark.parametrize(
    ("priority", "level"), [(0, 0), (0.99, 0), (1, 1), (3.9, 2), (4, 3), (1e9, 3)]
)
def test_queue_level_maps_a_priority_onto_the_boundaries(priority: float, level: int) -> None:
    assert queue_level(priority, [1, 2, 4]) == level


def test_counters_add_up_what_happened() -> None:
    sched = scheduler_for("mlfq", num_queues=2, first_quantum=1, beta=INF)
    a = sched.add(Call("a", "p"), 0.0)
    sched.add(Call("b", "q"), 0.0)
    sched.schedule(0.0, SlotAdmission(1))
    sched.charge(a, 1, 0.0)  # demoted
    sched.schedule(1.0, SlotAdmission(1))  # b preempts a
    sched.finish("b", 1.0)
    sched.abort("a", 1.0)
    c = sched.counters
    assert (c.decisions, c.demotions, c.preemptions, c.finished, c.aborted) == (2, 1, 1, 1, 1)
