"""The scheduler: live calls in priority order, batch formation, service accounting.

Data structures (chosen so that a decision costs O(batch), not O(live calls)):

- one sorted list of keys ``(request priority, rank, program arrival, arrival
  seq)`` over all live calls, running or waiting (program arrival is 0 but
  for PLAS/ATLAS with ``level_order = "program"``). For the queue policies
  the rank is the level, so the list *is* the K FCFS queues laid end to end;
  a key changes only on demotion or promotion (LAS re-keys on every
  charge). Insertion and removal are a bisect plus a memmove;
- waits are lazy (accumulated part plus the clock when the open wait began),
  so a decision only touches calls that start or stop running;
- anti-starvation uses a heap of promotion deadlines. While a call waits its
  ratio ``(W_p + W_c) / max(floor, T_p + T_c)`` grows linearly with the
  clock, so the clock value at which it reaches ``beta`` is known in advance;
  it changes only when the call is charged or a sibling completes (then a
  fresh entry is pushed and the old one is skipped as stale).
"""

from __future__ import annotations

import heapq
import math
from bisect import bisect_left, insort
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Protocol

from agentrt.scheduling.accounting import ProgramAccounting
from agentrt.scheduling.call import Call
from agentrt.scheduling.config import SchedulerConfig
from agentrt.scheduling.policies import Gittins, Policy, make_policy
from agentrt.scheduling.process_table import CallOutcome, CallRecord, ProcessTable, ProgramEntry

_Key = tuple[float, float, float, int]


class Admission(Protocol):
    """The engine's resource model for one decision, asked in priority order.

    ``admit`` reserves the call's resources for this step (KV blocks for its
    whole context, a batch slot, its share of the token budget) and returns
    True if they fit; otherwise it reserves nothing and returns False, and
    the scheduler stops (strict priority: nothing behind a refused call runs).
    Capacity is judged as if only the calls admitted so far hold KV: a running
    call that is not admitted is preempted and frees its blocks.

    One exception to the stop: an admission may set an attribute ``held_back``
    to True along with a refusal, when the call was kept out by the KV
    retention's hold on pinned blocks (:meth:`RetentionPolicy.holding`), a
    choice bounded in time rather than a shortage the call waits out in its
    turn; the walk then goes on to the calls behind it.
    """

    def admit(self, call: Call) -> bool: ...


@dataclass(slots=True)
class Decision:
    """What to run this step.

    ``batch``: the calls to run, in priority order. ``preempted``: calls that
    were running and lost their place (in priority order; the driver swaps or
    drops their KV). ``promoted``: calls the anti-starvation rule moved to the
    top queue during this decision (for metrics).
    """

    batch: list[Call] = field(default_factory=list)
    preempted: list[Call] = field(default_factory=list)
    promoted: list[Call] = field(default_factory=list)


@dataclass(slots=True)
class SchedulerCounters:
    """Running totals since the scheduler was made, for metrics."""

    decisions: int = 0
    preemptions: int = 0
    promotions: int = 0
    demotions: int = 0
    finished: int = 0
    aborted: int = 0


class Scheduler:
    """Orders one engine's live calls by the configured policy.

    Each engine step the driver calls :meth:`schedule` (or every N steps, for
    multi-step scheduling), runs the batch, then :meth:`charge` s each call
    that ran with the service it received, and :meth:`finish` es the calls
    that completed. New calls enter with :meth:`add`; cancelled ones leave
    with :meth:`abort`. In token mode, all charges of one step carry the same
    ``now`` and a later step a larger one (or pass ``step=``): waiting is
    counted in those steps.
    """

    def __init__(self, config: SchedulerConfig | None = None, table: ProcessTable | None = None):
        self.config = config or SchedulerConfig()
        self.policy: Policy = make_policy(self.config.policy, self.config)
        self.table = (
            table
            if table is not None
            else ProcessTable(
                ttl=self.config.program_ttl_s,
                max_programs=self.config.max_programs,
                max_call_records=self.config.max_call_records,
            )
        )
        self.accounting = ProgramAccounting(self.table, self.policy, self.config.boundaries)
        # Gittins learns program sizes from the programs that leave the table.
        self._sizes = self.policy.sizes if isinstance(self.policy, Gittins) else None
        if self._sizes is not None:
            sizes = self._sizes
            self.table.on_remove.append(lambda entry: sizes.observe(entry.service))
        self._quanta = self.config.quanta
        self._floor = self.config.floor
        self._beta = self.config.beta
        self._token_mode = self.config.unit == "tokens"
        self._starvation = self.policy.promotes_starving and math.isfinite(self._beta)
        # Fixed per policy; read on every charge, so looked up once.
        self._uses_levels = self.policy.uses_levels
        self._rekey_on_service = self.policy.rank_changes_with_service()
        self._program_aware = self.policy.program_aware
        self._by_program_arrival = self._program_aware and self.config.level_order == "program"
        self._calls: dict[str, Call] = {}
        self._by_seq: dict[int, Call] = {}
        self._by_program: dict[str, dict[str, Call]] = {}
        self._records: dict[int, CallRecord] = {}  # seq -> the call's record in the table
        self._order: list[_Key] = []
        self._running: dict[str, Call] = {}
        self._deadlines: list[tuple[float, int, int]] = []  # (clock, seq, version)
        self._next_seq = 0
        self._steps = 0  # token mode: engine steps seen through charge()
        self._last_step_now = -math.inf
        self.counters = SchedulerCounters()

    # --- introspection ---

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def get(self, call_id: str) -> Call | None:
        return self._calls.get(call_id)

    def calls(self) -> Iterator[Call]:
        """Live calls in priority order (running and waiting)."""
        by_seq = self._by_seq
        return (by_seq[key[3]] for key in self._order)

    @property
    def running(self) -> list[Call]:
        """The calls of the last decision's batch that are still live."""
        return list(self._running.values())

    @property
    def num_waiting(self) -> int:
        """Live calls not running (the simulator's retention weighs pins against them)."""
        return len(self._calls) - len(self._running)

    def calls_per_level(self) -> list[int]:
        """Live calls per queue level, top first (one level for fcfs and las); for metrics."""
        counts = [0] * (len(self._quanta) if self.policy.uses_levels else self.policy.num_levels)
        for call in self._calls.values():
            counts[call.level] += 1
        return counts

    def clock(self, now: float) -> float:
        """The wait clock: ``now`` in seconds, or the step count in token mode."""
        return float(self._steps) if self._token_mode else now

    def program(self, program_id: str) -> ProgramEntry | None:
        return self.table.get(program_id)

    # --- the driver's verbs ---

    def add(self, call: Call, now: float) -> Call:
        """A new call arrives: it takes its program's priority and enters its queue."""
        if call.call_id in self._calls:
            raise ValueError(f"call {call.call_id!r} is already scheduled")
        entry, record = self.accounting.admit(call, now)
        call.seq = self._next_seq
        self._next_seq += 1
        call.quantum = self._quanta[call.level if self._uses_levels else 0]
        call.service = call.service_c = 0.0
        call.running = call.promoted = False
        call._wait_acc = call._wait_c_acc = 0.0
        call._waiting_since = None
        call._start_waiting(self.clock(now))
        self._calls[call.call_id] = call
        self._by_seq[call.seq] = call
        self._by_program.setdefault(call.program_id, {})[call.call_id] = call
        self._records[call.seq] = record
        self._insert(call)
        self._push_deadline(call, entry)
        return call

    def schedule(self, now: float, admission: Admission) -> Decision:
        """Form this step's batch: walk the queues top-down, stop at the first refusal
        (a call a retention hold keeps out is passed over instead, see :class:`Admission`)."""
        clock = self.clock(now)
        if self._sizes is not None and self._sizes.refresh():
            self._rekey_all()
        decision = Decision(promoted=self._promote_starving(clock))
        batch = decision.batch
        by_seq = self._by_seq
        admit = admission.admit
        for key in self._order:
            call = by_seq[key[3]]
            if not admit(call):
                if getattr(admission, "held_back", False):
                    continue
                break
            batch.append(call)
        previous = self._running
        running = {call.call_id: call for call in batch}
        for call in batch:
            if not call.running:
                call.running = True
                call._stop_waiting(clock)
                self._records[call.seq].wait = call._wait_acc
                if self._starvation:
                    call._starve_version += 1  # its waiting deadline no longer applies
        preempted = [call for call_id, call in previous.items() if call_id not in running]
        if preempted:
            preempted.sort(key=_key_of)
            for call in preempted:
                call.running = False
                call._start_waiting(clock)
                self._push_deadline(call, self.table.get(call.program_id))
            decision.preempted = preempted
        if self.policy.rank_depends_on_running:
            started = [call for call in batch if call.call_id not in previous]
            for call in (*started, *preempted):
                self._remove(call)
                self._insert(call)
        self._running = running
        counters = self.counters
        counters.decisions += 1
        counters.preemptions += len(decision.preempted)
        counters.promotions += len(decision.promoted)
        return decision

    def charge(self, call: Call, service: float, now: float, *, step: int | None = None) -> None:
        """Account ``service`` (seconds or tokens) the call received in a step ending at ``now``.

        Works whether or not :meth:`schedule` ran since the last charge
        (multi-step scheduling); a call that already left is ignored.

        Token mode counts waiting in engine steps. ``step`` is the driver's
        engine-step counter after the step(s) charged; a driver that charges
        once per multi-step window passes it so that waiting calls are
        charged every step of the window. Without it, each new (larger)
        ``now`` counts as one step, which is right for a driver that charges
        every step with that step's time.
        """
        if not 0 <= service < math.inf:  # NaN fails both comparisons
            raise ValueError(f"service must be a finite number >= 0, not {service!r}")
        if self._token_mode:
            self._advance_steps(now, step)
        if self._calls.get(call.call_id) is not call:
            return
        call.service += service
        call.service_c += service
        record = self._records[call.seq]
        record.service = call.service
        rekey = self._rekey_on_service
        if self._uses_levels and not call.promoted:
            call.quantum -= service
            quanta = self._quanta
            last = len(quanta) - 1
            while call.quantum <= 0 and call.level < last:
                call.level += 1
                call.quantum += quanta[call.level]
                self.counters.demotions += 1
                rekey = True
            record.level = call.level
        if rekey:
            self._remove(call)
            self._insert(call)
        if self._starvation:
            if call.level == 0:  # what _push_deadline does for the top level, without the lookup
                call._starve_version += 1
            else:
                self._push_deadline(call, self.table.get(call.program_id))

    def finish(self, call_id: str, now: float) -> Call | None:
        """The call completed: update its program's service (PLAS/ATLAS rule). None if unknown."""
        return self._leave(call_id, now, CallOutcome.FINISHED)

    def abort(self, call_id: str, now: float) -> Call | None:
        """The call was cancelled. The service it received still counts for its program
        (otherwise aborting and retrying would reset a program's priority). None if unknown."""
        return self._leave(call_id, now, CallOutcome.ABORTED)

    # --- internals ---

    def _advance_steps(self, now: float, step: int | None) -> None:
        if step is not None:
            if step < 0:
                raise ValueError("step must be >= 0")
            self._steps = max(self._steps, step)
        elif now > self._last_step_now:
            self._steps += 1
        self._last_step_now = max(self._last_step_now, now)

    def _leave(self, call_id: str, now: float, outcome: CallOutcome) -> Call | None:
        call = self._calls.pop(call_id, None)
        if call is None:
            return None
        if outcome is CallOutcome.FINISHED:
            self.counters.finished += 1
        else:
            self.counters.aborted += 1
        self._remove(call)
        del self._by_seq[call.seq]
        siblings = self._by_program[call.program_id]
        del siblings[call_id]
        if not siblings:
            del self._by_program[call.program_id]
        self._running.pop(call_id, None)
        call.running = False
        call._stop_waiting(self.clock(now))
        del self._records[call.seq]
        entry = self.accounting.retire(call, now, wait=call._wait_acc, outcome=outcome)
        if entry is not None and self._starvation and self.policy.program_aware:
            for sibling in siblings.values():
                self._push_deadline(sibling, entry)
        return call

    def _rekey_all(self) -> None:
        """Rank every live call again (the policy's ranking itself changed)."""
        for call in self._calls.values():
            call._key = self._key(call)
        self._order = sorted(call._key for call in self._calls.values())

    def _key(self, call: Call) -> _Key:
        priority = call.priority if self.config.honor_request_priority else None
        arrival = 0.0
        if self._by_program_arrival:
            # A program with live calls is never expired, so its entry is there and keeps its time.
            entry = self.table.get(call.program_id)
            arrival = entry.created if entry is not None else call.arrival
        return (float(priority or 0), self.policy.rank(call), arrival, call.seq)

    def _insert(self, call: Call) -> None:
        call._key = key = self._key(call)
        insort(self._order, key)

    def _remove(self, call: Call) -> None:
        order = self._order
        key = call._key
        i = bisect_left(order, key)
        if i < len(order) and order[i] == key:
            del order[i]

    def _push_deadline(self, call: Call, entry: ProgramEntry | None) -> None:
        """Record the clock value at which the call becomes starving (its inputs changed).

        A waiting call's ratio grows with the clock, so its deadline is where
        it reaches beta. A running call's ratio does not grow (its W is
        frozen, its T grows); it is due at once if it is already at beta
        (possible after a demotion or a sibling's completion), otherwise never.
        """
        if not self._starvation:
            return
        call._starve_version += 1
        if call.level == 0:
            return
        if self._program_aware and entry is not None:
            w_p, t_p = entry.wait, entry.service
        else:
            w_p, t_p = 0.0, 0.0
        served = t_p + call.service_c
        floor = self.policy.starvation_floor(self._floor)
        budget = self._beta * (served if served > floor else floor)
        since = call._waiting_since
        if since is not None:
            deadline = since + budget - w_p - call._wait_c_acc
        elif w_p + call._wait_c_acc >= budget:
            deadline = -math.inf
        else:
            return
        heapq.heappush(self._deadlines, (deadline, call.seq, call._starve_version))
        if len(self._deadlines) > 2 * len(self._calls) + 64:
            self._compact_deadlines()

    def _compact_deadlines(self) -> None:
        live = [
            item
            for item in self._deadlines
            if (call := self._by_seq.get(item[1])) is not None and call._starve_version == item[2]
        ]
        heapq.heapify(live)
        self._deadlines = live

    def _promote_starving(self, clock: float) -> list[Call]:
        """Move every call whose starvation ratio reached beta to the top queue.

        A promoted call stays there until it ends: demoted again after one
        quantum, it would queue behind every newer program once more, and the
        bound would hold per quantum rather than per call. Its program's next
        call enters at the program's own level as usual.

        Running calls are promoted too (before the batch is formed): otherwise
        a running call already at beta could be preempted and then wait past
        the bound until the next decision.
        """
        promoted: list[Call] = []
        heap = self._deadlines
        while heap and heap[0][0] <= clock:
            _, seq, version = heapq.heappop(heap)
            call = self._by_seq.get(seq)
            if call is None or call._starve_version != version:
                continue
            # Only the call's own W and T reset; the program's stay.
            waiting = call._waiting_since is not None
            call._stop_waiting(clock)
            call._wait_c_acc = 0.0
            call.service_c = 0.0
            if waiting:
                call._start_waiting(clock)
            call._starve_version += 1
            self._remove(call)
            call.level = 0
            call.promoted = True
            call.quantum = self._quanta[0]
            self._insert(call)
            self._records[seq].level = 0
            promoted.append(call)
        return promoted


def _key_of(call: Call) -> _Key:
    return call._key


def make_scheduler(
    config: SchedulerConfig | None = None, table: ProcessTable | None = None
) -> Scheduler:
    """A scheduler for ``config.policy`` (the one constructor drivers need)."""
    return Scheduler(config, table)
