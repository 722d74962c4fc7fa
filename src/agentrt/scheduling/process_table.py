"""The process table: what the scheduler knows about each live agent program.

One :class:`ProgramEntry` per program, created on program start or on its
first call, removed on program end or after ``ttl`` seconds without a live
call. Memory is bounded: beyond ``max_programs`` the least recently active
programs without live calls are evicted (so a flood of one-call programs that
never end cannot grow the table), and each program keeps the records of at
most ``max_call_records`` completed calls. Programs with live calls are
never evicted: their number is bounded by the live calls the server admits,
so the table holds at most ``max(max_programs, programs with live calls + 1)``
entries (the +1 is a program started while every other one is busy). Idle
programs past the TTL are dropped whenever a new program arrives, or by
:meth:`ProcessTable.expire` when an owner calls it periodically.

The table can be shared by several schedulers and the load balancer of one
process (the router's), so program service is global across engines.
"""

from __future__ import annotations

import enum
from collections import OrderedDict, deque
from collections.abc import Callable


class CallOutcome(enum.StrEnum):
    """Where a call's record stands; the values are what ``/v1/programs`` reports."""

    LIVE = "live"
    FINISHED = "finished"
    ABORTED = "aborted"


class CallRecord:
    """Per-call metadata kept in the program's entry (live and recent completed calls)."""

    __slots__ = (
        "arrival",
        "call_id",
        "finished",
        "interrupt_time",
        "level",
        "outcome",
        "service",
        "thread_id",
        "wait",
    )

    def __init__(self, call_id: str, thread_id: str, arrival: float) -> None:
        self.call_id = call_id
        self.thread_id = thread_id
        self.arrival = arrival
        self.wait = 0.0  # set when the call leaves the scheduler (unit: the clock's)
        self.service = 0.0
        self.level = 0
        self.finished: float | None = None
        self.outcome = CallOutcome.LIVE
        self.interrupt_time = 0.0  # tool / human time the SDK reported after this call

    def __repr__(self) -> str:
        return f"CallRecord({self.call_id!r}, {self.outcome.value}, wait={self.wait:g}, service={self.service:g})"


class ProgramEntry:
    """One program: attained service, waiting time, engine affinity, call records."""

    __slots__ = (
        "created",
        "ended",
        "engine_id",
        "interrupt_time",
        "last_activity",
        "last_arrival",
        "last_completion",
        "live",
        "program_id",
        "recent",
        "retained_on",
        "retained_until",
        "service",
        "total_service",
        "wait",
    )

    def __init__(self, program_id: str, now: float, max_records: int) -> None:
        self.program_id = program_id
        self.created = now
        # The policy's priority scalar: PLAS sum or ATLAS longest critical path.
        self.service = 0.0
        self.total_service = 0.0  # sum of the service of all completed calls
        self.wait = 0.0  # W_p: sum of the waits of completed calls
        self.engine_id: str | None = None  # pinned engine (set and cleared by the Balancer)
        # The engine that keeps the program's last context pinned (its KV retention), and until
        # when (set by the Balancer from the engine's report, taken by the next call).
        self.retained_on: str | None = None
        self.retained_until = 0.0
        self.last_arrival: float | None = None
        self.last_completion: float | None = None
        self.last_activity = now
        self.interrupt_time = 0.0  # total tool / human time reported by the SDK
        self.ended = False  # ended while calls were live: dropped with its last call
        self.live: dict[str, CallRecord] = {}
        self.recent: deque[CallRecord] = deque(maxlen=max_records)

    def records(self) -> list[CallRecord]:
        """Recent completed calls (oldest first), then live calls."""
        return [*self.recent, *self.live.values()]

    def __repr__(self) -> str:
        return (
            f"ProgramEntry({self.program_id!r}, service={self.service:g}, wait={self.wait:g}, "
            f"live={len(self.live)}, engine={self.engine_id!r})"
        )


class ProcessTable:
    """Programs by id, with bounded memory and idle expiry."""

    def __init__(
        self, *, ttl: float = 600.0, max_programs: int = 100_000, max_call_records: int = 32
    ) -> None:
        if ttl <= 0 or max_programs < 1 or max_call_records < 0:
            raise ValueError("ttl and max_programs must be positive, max_call_records >= 0")
        self.ttl = ttl
        self.max_programs = max_programs
        self.max_call_records = max_call_records
        self._busy: dict[str, ProgramEntry] = {}  # programs with live calls
        # Programs without live calls, least recently active first.
        self._idle: OrderedDict[str, ProgramEntry] = OrderedDict()
        # Called with each program's entry as it leaves the table (ended, expired or evicted).
        self.on_remove: list[Callable[[ProgramEntry], None]] = []

    # --- lookup ---

    def __len__(self) -> int:
        return len(self._busy) + len(self._idle)

    def __contains__(self, program_id: object) -> bool:
        return program_id in self._busy or program_id in self._idle

    def get(self, program_id: str) -> ProgramEntry | None:
        return self._busy.get(program_id) or self._idle.get(program_id)

    def programs(self) -> list[ProgramEntry]:
        return [*self._busy.values(), *self._idle.values()]

    # --- program lifecycle ---

    def start(self, program_id: str, now: float) -> ProgramEntry:
        """A program started (or called for the first time): its entry, created if absent."""
        entry = self.get(program_id)
        if entry is not None:
            entry.ended = False
            self._touch(entry, now)
            return entry
        self.expire(now)
        self._make_room(1)
        entry = ProgramEntry(program_id, now, self.max_call_records)
        self._idle[program_id] = entry
        return entry

    def end(self, program_id: str, now: float) -> bool:
        """A program ended: drop it now, or with its last live call. False if unknown."""
        entry = self.get(program_id)
        if entry is None:
            return False
        if entry.live:
            entry.ended = True
            entry.last_activity = now
        else:
            self._remove(entry)
        return True

    def expire(self, now: float) -> list[str]:
        """Drop programs idle for ``ttl`` or longer; returns their ids."""
        expired: list[str] = []
        while self._idle:
            program_id, entry = next(iter(self._idle.items()))
            if now - entry.last_activity < self.ttl:
                break
            self._remove(entry)
            expired.append(program_id)
        return expired

    # --- calls ---

    def call_started(
        self, program_id: str, call_id: str, thread_id: str, now: float
    ) -> tuple[ProgramEntry, CallRecord]:
        """A call of the program arrived: the program's entry (created if absent) and the call's record."""
        entry = self.start(program_id, now)
        record = CallRecord(call_id, thread_id, now)
        entry.live[call_id] = record
        entry.last_arrival = now
        if program_id in self._idle:
            del self._idle[program_id]
            self._busy[program_id] = entry
        return entry, record

    def call_ended(
        self, program_id: str, call_id: str, now: float, outcome: CallOutcome
    ) -> CallRecord | None:
        """Close a call's record (its wait, service, level filled in by ``ProgramAccounting.retire``).

        The record moves to the program's recent records; its wait and
        service are added to the program's totals.
        """
        entry = self.get(program_id)
        if entry is None:
            return None
        record = entry.live.pop(call_id, None)
        if record is None:
            return None
        record.finished, record.outcome = now, outcome
        entry.recent.append(record)
        entry.wait += record.wait
        entry.total_service += record.service
        entry.last_completion = now
        if not entry.live:
            del self._busy[program_id]
            if entry.ended:
                return record
            entry.last_activity = now
            self._idle[program_id] = entry
            self._make_room(0)
        return record

    def record_interrupt(
        self, program_id: str, seconds: float, now: float, *, call_id: str | None = None
    ) -> bool:
        """The SDK reports tool / human time (after ``call_id`` when given). False if unknown."""
        if seconds < 0:
            raise ValueError("interrupt time must be >= 0")
        entry = self.get(program_id)
        if entry is None:
            return False
        entry.interrupt_time += seconds
        self._touch(entry, now)
        if call_id is not None:
            record = entry.live.get(call_id) or next(
                (r for r in reversed(entry.recent) if r.call_id == call_id), None
            )
            if record is not None:
                record.interrupt_time += seconds
        return True

    # --- internals ---

    def _touch(self, entry: ProgramEntry, now: float) -> None:
        entry.last_activity = max(entry.last_activity, now)
        if entry.program_id in self._idle:
            self._idle.move_to_end(entry.program_id)

    def _make_room(self, extra: int) -> None:
        """Evict the least recently active idle programs until ``extra`` more fit."""
        while len(self) + extra > self.max_programs and self._idle:
            _, entry = next(iter(self._idle.items()))
            self._remove(entry)

    def _remove(self, entry: ProgramEntry) -> None:
        self._idle.pop(entry.program_id, None)
        self._busy.pop(entry.program_id, None)
        for listener in self.on_remove:
            listener(entry)
