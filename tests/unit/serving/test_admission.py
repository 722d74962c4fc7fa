"""The admission queue in front of a first-come-first-served engine, on its own (a fake clock)."""

from __future__ import annotations

import anyio
import pytest

from agentrt.scheduling import SchedulerConfig
from agentrt.serving.router.admission import AdmissionQueue, Grant


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def queue(limit: int | None, policy: str = "plas", **options: object) -> AdmissionQueue:
    config = SchedulerConfig(policy=policy, **options)  # type: ignore[arg-type]
    return AdmissionQueue(config, limit=limit, clock=Clock())


async def _waits(
    q: AdmissionQueue, calls: list[tuple[str, str, float]], grants: dict[str, Grant], tg: object
) -> None:
    """Start each (call, program, program service) waiting, in this order."""
    for call_id, program, service in calls:

        async def wait(call_id: str = call_id, program: str = program, service: float = service):
            grants[call_id] = await q.acquire(call_id, program, "main", service)

        tg.start_soon(wait)  # type: ignore[attr-defined]
        await anyio.wait_all_tasks_blocked()


async def test_freed_slots_go_to_the_programs_with_least_service_first() -> None:
    for policy, expected in (
        ("plas", ["light", "mid", "heavy"]),
        ("fcfs", ["heavy", "mid", "light"]),
    ):
        q = queue(1, policy)
        first = await q.acquire("first", "p0", "main", 0.0)
        grants: dict[str, Grant] = {}
        order: list[str] = []
        async with anyio.create_task_group() as tg:
            await _waits(
                q, [("heavy", "h", 40.0), ("mid", "m", 2.0), ("light", "l", 0.0)], grants, tg
            )
            assert q.waiting == 3 and q.inflight == 1
            q.release(first)
            for _ in range(3):
                await anyio.wait_all_tasks_blocked()
                (granted,) = [c for c in grants if c not in order]
                order.append(granted)
                q.release(grants[granted])
        assert order == expected, policy
        assert q.inflight == 0 and q.waiting == 0


async def test_by_program_inside_a_level_the_program_that_came_first_goes_first() -> None:
    """By program, its first call was granted at once, yet its arrival orders its later calls."""
    for level_order, expected in ((None, "late.0"), ("program", "early.1"), ("call", "late.0")):
        options = {} if level_order is None else {"level_order": level_order}
        q = queue(1, "plas", **options)
        clock = q._clock
        assert isinstance(clock, Clock)
        first = await q.acquire("early.0", "early", "main", 0.0)
        grants: dict[str, Grant] = {}
        async with anyio.create_task_group() as tg:
            clock.now = 1.0
            await _waits(q, [("late.0", "late", 0.0)], grants, tg)
            clock.now = 2.0
            await _waits(q, [("early.1", "early", 0.1)], grants, tg)  # same level as late.0
            q.release(first)
            await anyio.wait_all_tasks_blocked()
            assert list(grants) == [expected], level_order
            q.release(grants[expected])
            await anyio.wait_all_tasks_blocked()
            for grant in grants.values():
                if grant is not grants[expected]:
                    q.release(grant)
        assert q.inflight == 0 and q.waiting == 0


async def test_a_call_abandoned_while_waiting_leaves_no_trace() -> None:
    q = queue(1)
    first = await q.acquire("first", "p0", "main", 0.0)
    grants: dict[str, Grant] = {}
    gone = anyio.CancelScope()

    async def abandoned() -> None:
        with gone:
            await q.acquire("gone", "p1", "main", 0.0)

    async with anyio.create_task_group() as tg:
        tg.start_soon(abandoned)
        await anyio.wait_all_tasks_blocked()
        await _waits(q, [("next", "p2", 5.0)], grants, tg)
        assert q.waiting == 2
        gone.cancel()
        await anyio.wait_all_tasks_blocked()
        assert q.waiting == 1
        q.release(first)
        await anyio.wait_all_tasks_blocked()
        assert list(grants) == ["next"]
        q.release(grants["next"])
    assert q.inflight == 0
    entry = q._scheduler.table.get("p1")
    assert entry is None or (entry.wait == 0 and not entry.live and not entry.recent)
    assert len(q._scheduler) == 0


async def test_a_call_granted_then_cancelled_gives_its_slot_back() -> None:
    q = queue(1)
    first = await q.acquire("first", "p0", "main", 0.0)
    scope = anyio.CancelScope()

    async def late() -> None:
        with scope:
            grant = await q.acquire("late", "p1", "main", 0.0)
            try:
                await anyio.sleep_forever()
            finally:
                q.release(grant)

    async with anyio.create_task_group() as tg:
        tg.start_soon(late)
        await anyio.wait_all_tasks_blocked()
        q.release(first)  # grants "late" ...
        scope.cancel()  # ... which is cancelled before it resumes
    assert q.inflight == 0 and q.waiting == 0
    again = await q.acquire("again", "p2", "main", 0.0)
    assert again.wait == 0.0


async def test_a_heavy_program_that_waited_long_enough_is_promoted() -> None:
    """Anti-starvation: (W_p + W_c) / max(floor, T_p + T_c) >= beta moves it to the top queue."""
    for waited, expected in ((1.0, ["light", "heavy"]), (1000.0, ["heavy", "light"])):
        q = queue(1, "plas", beta=8.0)
        clock = q._clock
        assert isinstance(clock, Clock)
        first = await q.acquire("first", "p0", "main", 0.0)
        grants: dict[str, Grant] = {}
        order: list[str] = []
        async with anyio.create_task_group() as tg:
            await _waits(q, [("heavy", "h", 10.0)], grants, tg)
            clock.now = waited
            await _waits(q, [("light", "l", 0.0)], grants, tg)
            q.release(first)
            for _ in range(2):
                await anyio.wait_all_tasks_blocked()
                (granted,) = [c for c in grants if c not in order]
                order.append(granted)
                q.release(grants[granted])
        assert order == expected, waited
        assert grants["heavy"].wait == pytest.approx(waited)


async def test_without_a_bound_every_call_runs_at_once() -> None:
    q = queue(None)
    grants = [await q.acquire(f"c{i}", "p", "main", 0.0) for i in range(50)]
    assert q.inflight == 50 and all(g.wait == 0 and g.slot is None for g in grants)
    for g in grants:
        q.release(g)
    assert q.inflight == 0


async def test_a_thread_returns_to_the_slot_that_holds_its_context() -> None:
    q = AdmissionQueue(SchedulerConfig(policy="plas"), limit=2, slots=True, clock=Clock())
    a = await q.acquire("a1", "A", "main", 0.0)
    b = await q.acquire("b1", "B", "main", 0.0)
    assert {a.slot, b.slot} == {0, 1}
    q.release(a)
    q.release(b)
    b2 = await q.acquire("b2", "B", "main", 0.0)
    a2 = await q.acquire("a2", "A", "main", 0.0)
    assert (a2.slot, b2.slot) == (a.slot, b.slot)
    q.release(a2)
    # A's slot is free, B's is busy: a second thread of B takes A's old slot rather than wait.
    b3 = await q.acquire("b3", "B", "other", 0.0)
    assert b3.slot == a.slot
    q.release(b2)
    q.release(b3)
    # After the program ends, its slot holds nothing worth returning to.
    q.end_program("B")
    c = await q.acquire("c1", "C", "main", 0.0)
    assert c.slot == b.slot  # B's main slot is nobody's now; A's is still A's


async def test_calls_queued_ahead_are_sent_in_the_policys_order() -> None:
    """One slot and one call ahead: two calls reach the engine, the rest wait here in PLAS order."""
    q = AdmissionQueue(SchedulerConfig(policy="plas"), limit=1, ahead=1, clock=Clock())
    running = await q.acquire("running", "p0", "main", 0.0)
    ahead = await q.acquire("ahead", "p1", "main", 0.0)
    assert (running.ahead, ahead.ahead) == (False, True) and ahead.slot is None
    assert q.inflight == 2
    grants: dict[str, Grant] = {}
    order: list[str] = []
    async with anyio.create_task_group() as tg:
        await _waits(q, [("heavy", "h", 40.0), ("light", "l", 0.0)], grants, tg)
        assert q.waiting == 2 and not grants
        q.release(running)  # the call ahead starts in the engine; the head of the order goes ahead
        await anyio.wait_all_tasks_blocked()
        assert list(grants) == ["light"] and grants["light"].ahead
        order.append("light")
        q.release(ahead)
        await anyio.wait_all_tasks_blocked()
        assert [c for c in grants if c not in order] == ["heavy"]
        q.release(grants["light"])
        q.release(grants["heavy"])
    assert q.inflight == 0 and q.waiting == 0


async def test_a_call_queued_ahead_takes_the_slot_that_frees_first() -> None:
    q = AdmissionQueue(SchedulerConfig(policy="plas"), limit=2, ahead=1, slots=True, clock=Clock())
    a = await q.acquire("a1", "A", "main", 0.0)
    b = await q.acquire("b1", "B", "main", 0.0)
    c = await q.acquire("c1", "C", "main", 0.0)
    assert c.ahead and c.slot is None  # sent naming no slot: the engine gives it the first free
    q.release(b)
    assert c.slot == b.slot  # the engine started it in B's slot
    d = await q.acquire("d1", "D", "main", 0.0)
    assert d.ahead and d.slot is None
    q.release(d)  # it left while still queued at the engine: no slot to free
    assert q.inflight == 2
    q.release(c)
    # C's thread now holds B's old slot: it goes back there when it is free.
    c2 = await q.acquire("c2", "C", "main", 0.0)
    assert c2.slot == b.slot and not c2.ahead
    q.release(a)
    q.release(c2)
    assert q.inflight == 0


async def test_a_thread_whose_slot_is_taken_is_saved_and_restored_where_it_runs_next() -> None:
    q = AdmissionQueue(
        SchedulerConfig(policy="plas"), limit=1, slots=True, save=True, clock=Clock()
    )
    a = await q.acquire("a1", "A", "main", 0.0)
    assert (a.slot, a.save, a.restore) == (0, None, None)
    q.release(a)
    a2 = await q.acquire("a2", "A", "main", 0.0)  # its own slot: nothing to move
    assert (a2.save, a2.restore) == (None, None)
    q.release(a2)
    b = await q.acquire("b1", "B", "main", 0.0)  # takes A's slot: A is saved first
    assert (b.save, b.restore) == ("A\x00main", None)
    q.release(b)
    a3 = await q.acquire("a3", "A", "main", 0.0)  # B is saved, A restored
    assert (a3.save, a3.restore) == ("B\x00main", "A\x00main")
    q.unsaved("B\x00main")  # the server refused to save B: B's next call computes it again
    q.release(a3)
    b2 = await q.acquire("b2", "B", "main", 0.0)
    assert (b2.save, b2.restore) == ("A\x00main", None)
    q.release(b2)
    q.end_program("A")  # an ended program's saved context is never restored
    a4 = await q.acquire("a4", "A", "main", 0.0)
    assert a4.restore is None
    q.release(a4)


def test_saving_slots_needs_them_told_apart_and_no_call_ahead() -> None:
    with pytest.raises(ValueError, match="told apart"):
        AdmissionQueue(limit=2, save=True)
    with pytest.raises(ValueError, match="queue_ahead=0"):
        AdmissionQueue(limit=2, slots=True, ahead=1, save=True)


def test_limits_must_be_positive() -> None:
    with pytest.raises(ValueError, match="max_inflight"):
        AdmissionQueue(limit=0)
    with pytest.raises(ValueError, match="queue_ahead"):
        AdmissionQueue(limit=1, ahead=-1)
    with pytest.raises(ValueError, match="bound"):
        AdmissionQueue(limit=None, slots=True)
