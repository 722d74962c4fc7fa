"""Admission in front of an engine that runs whatever it is sent first come, first served.

llama.cpp's server, Ollama or a vLLM without priority scheduling take every
request they get into their own FIFO queue, so forwarding calls the moment
they arrive leaves agentrt's policy nothing to decide. An
:class:`AdmissionQueue` keeps at most ``limit`` calls in flight on such an
engine (its slot count) and holds the rest here, in the order of the
configured program-level policy: the waiting calls live in a
:class:`~agentrt.scheduling.Scheduler` of their own (PLAS, ATLAS, MLFQ with
its anti-starvation promotion), and each freed slot goes to the head of its
order. A call leaves that scheduler when it is granted a slot (its wait
closes there) or when its caller gives up (it is dropped, nothing was sent).

The scheduler's table mirrors only what ordering needs: a program's entry
is made by its first call here (granted at once or not: with ``level_order
= "program"`` its arrival orders the program within a level), each call credits its program with the service
the router has seen (``attained_service`` of the call's tag, all engines
together), and the waits of granted calls make the program's W_p of the
starvation ratio.

With ``slots`` the engine's slots are told apart (llama.cpp's ``id_slot``):
a program's thread goes back to the slot that holds its context when that
slot is free; otherwise it takes a slot no thread holds, else the one used
least recently, so a thread whose own slot is busy does not wait for it
while another slot idles.

With ``ahead`` the engine is sent up to that many calls beyond its slots,
still released in the policy's order: they wait in the engine's own queue
and start the moment a slot frees, where a call released only then would
leave the slot idle for the relay's round trip. Those calls name no slot
(the engine gives them whichever frees first); with ``slots``, the one sent
ahead longest is taken to be in the slot that frees next, which is what a
first-come-first-served engine does with calls that name none.

With ``save`` (llama.cpp's slot save/restore), a thread whose slot is given
to another is saved first, and restored into the slot its next call gets,
instead of its context being computed again. The grant says what to save
and restore; the backend does it before sending the call. Calls sent ahead
would take slots before they could be saved, so saving sends none ahead.
"""

from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable

import anyio
import msgspec

from agentrt.scheduling import Call, Scheduler, SchedulerConfig


class Grant:
    """A call's admission: how long it waited and the slot it is sent to (None: any).

    A call sent ahead of the engine's slots names none; with slots told apart,
    ``slot`` becomes the one it is taken to run in once a slot frees for it.
    """

    __slots__ = ("ahead", "key", "restore", "save", "slot", "started", "wait")

    def __init__(self, wait: float, slot: int | None, key: str = "", ahead: bool = False) -> None:
        self.wait = wait
        self.slot = slot
        self.key = key
        self.ahead = ahead
        # When a call sent ahead is taken to have started in the slot that freed for it (the
        # clock's time; None: it started when it was sent, or it is not known).
        self.started: float | None = None
        self.save: str | None = None  # the thread whose context to save from the slot first
        self.restore: str | None = None  # the thread whose saved context to load into it


class _Waiter:
    __slots__ = ("arrival", "event", "grant", "key")

    def __init__(self, key: str, arrival: float) -> None:
        self.key = key  # the program thread whose context it continues
        self.arrival = arrival
        self.event = anyio.Event()
        self.grant: Grant | None = None


class _Room:
    """The scheduler's admission test: the first ``free`` calls in its order get a slot."""

    __slots__ = ("free",)

    def __init__(self, free: int) -> None:
        self.free = free

    def admit(self, call: Call) -> bool:
        if self.free <= 0:
            return False
        self.free -= 1
        return True


class _Slots:
    """Which thread's context each engine slot holds, which slots are busy, and their last use."""

    def __init__(self, count: int, save: bool = False) -> None:
        self.save = save
        self.saved: set[str] = set()  # threads whose context was saved when their slot was taken
        self.size = count
        self.owner: list[str | None] = [None] * count
        self.busy = [False] * count
        self.used = [0] * count
        self.home: dict[str, int] = {}
        self._tick = 0

    def resize(self, count: int) -> None:
        """A restarted server may have another slot count: slots beyond it are no longer granted."""
        extra = count - len(self.owner)
        if extra > 0:
            self.owner += [None] * extra
            self.busy += [False] * extra
            self.used += [0] * extra
        self.size = count
        for key in [k for k, slot in self.home.items() if slot >= count]:
            del self.home[key]

    def free_slots(self) -> list[int]:
        return [i for i in range(self.size) if not self.busy[i]]

    def assign(self, keys: list[str]) -> list[tuple[int, str | None, str | None]]:
        """Slots for threads granted together: first each one's own free slot, then the others;
        with each, the thread to save from it first and the one to restore into it (or None)."""
        free = set(self.free_slots())
        chosen: list[int | None] = [None] * len(keys)
        for i, key in enumerate(keys):
            slot = self.home.get(key)
            if slot is not None and slot in free:
                chosen[i] = slot
                free.discard(slot)
        for i in range(len(keys)):
            if chosen[i] is None:
                # A slot no thread holds, else the one used least recently.
                slot = min(free, key=lambda s: (self.owner[s] is not None, self.used[s]))
                free.discard(slot)
                chosen[i] = slot
        result = [slot for slot in chosen if slot is not None]
        return [(slot, *self._claim(key, slot)) for key, slot in zip(keys, result, strict=True)]

    def _claim(self, key: str, slot: int) -> tuple[str | None, str | None]:
        save = restore = None
        previous = self.owner[slot]
        if previous is not None and self.home.get(previous) == slot:
            del self.home[previous]
            if self.save and previous != key:
                save = previous
                self.saved.add(previous)
        if self.save and key in self.saved and self.home.get(key) != slot:
            restore = key
            self.saved.discard(key)
        self.owner[slot] = key
        self.home[key] = slot
        self.busy[slot] = True
        self._tick += 1
        self.used[slot] = self._tick
        return save, restore

    def release(self, slot: int) -> None:
        self.busy[slot] = False

    def take(self, slot: int, key: str) -> int:
        """A call the engine started in ``slot`` without our choosing it (one sent ahead)."""
        self._claim(key, slot)  # never saving: calls are only sent ahead when slots are not saved
        return slot

    def forget(self, prefix: str) -> None:
        """The program ended: its threads' slots hold nothing worth returning to."""
        for key in [k for k in self.home if k.startswith(prefix)]:
            self.owner[self.home.pop(key)] = None
        self.saved = {k for k in self.saved if not k.startswith(prefix)}


class AdmissionQueue:
    """At most ``limit`` calls in flight; the rest wait here in the policy's order."""

    def __init__(
        self,
        scheduler: SchedulerConfig | None = None,
        *,
        limit: int | None = None,
        ahead: int = 0,
        slots: bool = False,
        save: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        config = scheduler or SchedulerConfig()
        if config.unit != "time":
            # Waits here are seconds of wall clock, whatever unit the engines' service is in;
            # levels and quanta stay in that unit.
            defaults = config.unit_defaults
            config = msgspec.structs.replace(
                config,
                service_unit="time",
                first_boundary=config.first_boundary or defaults.first_boundary,
                first_quantum=config.first_quantum or defaults.first_quantum,
                starvation_floor=config.starvation_floor or defaults.starvation_floor,
            )
        self._config = config
        self._scheduler = Scheduler(config)
        self._waiters: dict[str, _Waiter] = {}
        self._clock = clock
        self._slots: _Slots | None = None
        # Calls sent ahead that no slot is known to hold yet, oldest first (slots told apart).
        self._queued: deque[Grant] = deque()
        self.limit: int | None = None
        self.ahead = 0
        self.inflight = 0
        self.configure(limit, ahead=ahead, slots=slots, save=save)

    # -- configuration -------------------------------------------------------

    def configure(
        self, limit: int | None, *, ahead: int = 0, slots: bool = False, save: bool = False
    ) -> None:
        """Bound calls running (None: no bound) plus ``ahead`` queued at the engine, tell the
        engine's slots apart or not, and save the contexts of threads whose slot is taken.

        Slots need a bound (one slot per running call). Calls in flight keep
        what they were granted; a server restarted with another slot count
        gets the new one from here on.
        """
        if limit is not None and limit < 1:
            raise ValueError(f"max_inflight must be >= 1, got {limit}")
        if ahead < 0:
            raise ValueError(f"queue_ahead must be >= 0, got {ahead}")
        if slots and limit is None:
            raise ValueError("telling slots apart needs a bound on calls in flight")
        if save and not slots:
            raise ValueError("saving slots needs them told apart")
        if save and ahead:
            raise ValueError("calls sent ahead take slots before they can be saved: queue_ahead=0")
        self.limit = limit
        self.ahead = ahead
        if not slots:
            self._slots = None
        elif self._slots is None:
            self._slots = _Slots(limit or 0, save)
        else:
            self._slots.resize(limit or 0)
            self._slots.save = save
        self._dispatch()

    @property
    def waiting(self) -> int:
        return len(self._waiters)

    # -- calls ---------------------------------------------------------------

    async def acquire(
        self, call_id: str, program_id: str | None, thread_id: str, service: float
    ) -> Grant:
        """Wait for a slot. Cancelled while waiting, the call leaves no trace; release every grant."""
        now = self._clock()
        key = f"{program_id or call_id}\x00{thread_id}"
        if self.limit is None:
            self.inflight += 1
            return Grant(0.0, None)
        program = program_id or call_id
        if program_id is not None:
            # The program's arrival is its first call here, waiting or not: with
            # level_order = "program", PLAS and ATLAS order a level by it.
            self._scheduler.table.start(program, now)
        if not self._waiters and self._free() > 0:
            return self._grant([key], 0.0, [0.0])[0]
        if call_id in self._waiters:
            raise ValueError(f"call {call_id!r} is already waiting for admission")
        if service > 0:
            self._scheduler.accounting.credit(program, service, now)
        self._scheduler.add(Call(call_id, program, arrival=now, thread_id=thread_id), now)
        waiter = self._waiters[call_id] = _Waiter(key, now)
        try:
            await waiter.event.wait()
        except BaseException:
            if waiter.grant is not None:  # granted, then cancelled before it could run
                self.release(waiter.grant)
            else:
                del self._waiters[call_id]
                self._drop(call_id, program)
            raise
        assert waiter.grant is not None
        return waiter.grant

    def release(self, grant: Grant) -> None:
        """The call left the engine (finished, failed or aborted): its slot goes to the next.

        With slots told apart, a call sent ahead takes the freed slot (the
        engine starts the oldest one there); then the policy's head is sent.
        """
        self.inflight -= 1
        slots = self._slots
        if grant.ahead and grant.slot is None:  # it left while queued at the engine
            with contextlib.suppress(ValueError):
                self._queued.remove(grant)
        elif grant.slot is not None and slots is not None and grant.slot < len(slots.busy):
            slots.release(grant.slot)
            if self._queued and grant.slot < slots.size:
                moved = self._queued.popleft()
                moved.slot = slots.take(grant.slot, moved.key)
                moved.started = self._clock()
        self._dispatch()

    def unsaved(self, key: str) -> None:
        """Saving the thread's context failed: its next call computes it again."""
        if self._slots is not None:
            self._slots.saved.discard(key)

    def end_program(self, program_id: str) -> None:
        self._scheduler.table.end(program_id, self._clock())
        if self._slots is not None:
            self._slots.forget(f"{program_id}\x00")

    # -- internals -----------------------------------------------------------

    def _assign(self, keys: list[str]) -> list[tuple[int | None, str | None, str | None]]:
        if self._slots is None:
            return [(None, None, None)] * len(keys)
        return list(self._slots.assign(keys))

    def _free_slots(self) -> int:
        """Calls that can start in a slot now (the rest of ``_free`` queue at the engine)."""
        assert self.limit is not None
        running = self.inflight - len(self._queued)
        if self._slots is not None:
            return min(self.limit - running, len(self._slots.free_slots()))
        return max(0, self.limit - self.inflight)

    def _free(self) -> int:
        if self.limit is None:
            return len(self._waiters) + 1
        return self.limit + self.ahead - self.inflight

    def _grant(self, keys: list[str], now: float, arrivals: list[float]) -> list[Grant]:
        """Grants for calls sent now, in order: the first take free slots, the rest go ahead."""
        starting = min(len(keys), self._free_slots()) if self.limit is not None else len(keys)
        slots = self._assign(keys[:starting])
        grants = []
        for i, (key, arrival) in enumerate(zip(keys, arrivals, strict=True)):
            if i < starting:
                grant = Grant(now - arrival, slots[i][0], key)
                grant.save, grant.restore = slots[i][1:]
            else:
                grant = Grant(now - arrival, None, key, ahead=True)
                if self._slots is not None:
                    self._queued.append(grant)
            grants.append(grant)
        self.inflight += len(keys)
        return grants

    def _dispatch(self) -> None:
        """Send the head of the policy's order to free slots, then ahead of them."""
        free = self._free()
        if free <= 0 or not self._waiters:
            return
        now = self._clock()
        decision = self._scheduler.schedule(now, _Room(free))
        waiters = [self._waiters.pop(call.call_id) for call in decision.batch]
        grants = self._grant([w.key for w in waiters], now, [w.arrival for w in waiters])
        for call, waiter, grant in zip(decision.batch, waiters, grants, strict=True):
            self._scheduler.finish(call.call_id, now)
            waiter.grant = grant
            waiter.event.set()

    def _drop(self, call_id: str, program_id: str) -> None:
        """Remove an abandoned call without a record: it neither waited nor ran, as far as any
        program's starvation ratio is concerned."""
        scheduler = self._scheduler
        call = scheduler.get(call_id)
        if call is None:
            return
        entry = scheduler.table.get(program_id)
        wait_before = entry.wait if entry is not None else 0.0
        scheduler.abort(call_id, self._clock())
        if entry is not None:
            entry.wait = wait_before
            entry.recent = type(entry.recent)(
                (r for r in entry.recent if r.call_id != call_id), maxlen=entry.recent.maxlen
            )
