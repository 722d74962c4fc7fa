"""Program-aware KV retention: which cached KV to keep across a program's tool calls.

One object per KV pool (an engine's blocks, a simulated engine's segments),
used by the engine and the simulator alike. The cache hands it the *units*
it may evict (a block id, a segment key: anything hashable) when their last
user releases them, takes them back on reuse, and asks it for the next
victim when it needs room. The policy decides:

- **Pins.** When a call of a program finishes, :meth:`RetentionPolicy.call_finished`
  decides whether the program's context stays *pinned* and for how long (a
  time-to-live). The units released right after it, under the program's id,
  belong to the pin. The TTL comes from the observed interrupt durations
  (the time between a call's end and the program's next call), learned
  online per tool name and per program (:class:`InterruptPredictor`), and
  weighs what an eviction costs against what holding the memory costs
  (:func:`choose_ttl`, after Continuum, arXiv 2511.02230): the TTL ``t``
  maximises ``P(D <= t) * benefit - cost_rate * E[min(D, t)]`` over the
  observed durations ``D``, where ``benefit`` is the reload cost (recompute
  or swap-in seconds) times ``1 + waiting / batch_slots`` (a recompute
  occupies the engine the waiting calls share) and ``cost_rate`` is
  ``queueing_cost * waiting * blocks / capacity`` (each waiting call is
  slowed by the share of the pool held idle). With nobody waiting, holding
  costs nothing and the pin covers the longest observed interrupt (up to
  ``max_ttl_s``). ``queueing_cost`` is 0 by default: a pin yields to every
  call the engine admits, and holds one back only by the hold rule below,
  which weighs that call's wait itself, so the memory a pin keeps idle does
  not delay the waiting calls the TTL would charge it for (1 prices it as
  Continuum does).
- **The next call.** :meth:`RetentionPolicy.call_arrived` records the
  interrupt and turns a live pin into an *awaited* one (its call is queued);
  :meth:`RetentionPolicy.call_admitted` closes it (the call holds the KV).
  A pin whose TTL passes before its program calls again *expires*: its units
  become ordinary cache, at the place their release gave them.
- **Eviction order** (:meth:`RetentionPolicy.victim`): first the units of no
  live pin, least recently released first (what vLLM and SGLang do for every
  unit); then, only when none is left, the pins by expected reuse: the pin of
  the program the active scheduling policy ranks last (its queue level, see
  :func:`policy_priority`) and, among equals, the one expected back latest
  (an awaited pin is expected now). That pin *yields* whole: all its units
  become ordinary cache and go, oldest release first. A closed pin's units
  keep their release order among ordinary ones, so a unit other programs share
  (a system prompt, tool docs) is not pushed ahead of colder ones because the
  program that released it last has ended.
- **Tool signals.** Where the client says when a program's tool starts and ends
  (agentrt's SDK does, around ``@agentrt.tool``), :meth:`RetentionPolicy.tool_started`
  *holds* the program's pin while the tool runs: its deadline moves to
  ``max_ttl_s`` from the tool's start, whatever the prediction said, and the
  interrupt is learnt under the tool's name. :meth:`RetentionPolicy.tool_ended`
  releases the hold: the pin is expected back now and lives ``after_tool_s``
  more for the call that follows. Without the signals the policy learns from the
  gaps between a program's calls alone.
- **Lost contexts.** A context the program may still come back for is
  *lost* when a pin yields, expires or is displaced, and when the first unit
  of a live program's unpinned context (a pin refused for the budget, or never
  made) is chosen as a victim. The cache is offered the whole context then,
  before any of it is evicted (:attr:`RetentionPolicy.on_lost`): the engine
  and the simulator copy it to their host pool when it has room and copy it
  back when the program's next call is admitted, so a context the device pool
  cannot keep is reloaded instead of recomputed. A program's context is offered once per
  release; an ended program's is not offered.
- **Budget and pressure.** Pins cover at most ``pin_budget`` of the pool's
  blocks; a new pin that does not fit displaces pins the eviction order
  would take before it, or is refused. Pins never block a running call: the
  cache treats pinned units as evictable, and :meth:`RetentionPolicy.victim`
  returns one whenever any unit is evictable (the yield rule above).
- **Holding against new admissions** (:meth:`RetentionPolicy.holding`). A
  live pin keeps its units from a call that holds no KV yet (a new call, or a
  preempted one), so that the program coming back from its tool finds its
  context, when all of these hold:

  1. the pin is another program's, and that program's queue level is at
     least as good as the newcomer's (the active policy would serve it
     first or as soon);
  2. its program is expected back sooner than the recompute the pin saves
     (``return_at - now <= reload_s``), or its call is already queued: the
     newcomer's wait is then worth less than the pin's reuse;
  3. the pin is live: its TTL has not passed; a pin whose TTL passes, whose
     program ends or that a better pin displaces no longer holds anything,
     and one whose expected return slips past its reload cost stops holding;
  4. the newcomer arrived less than ``max_hold_s`` ago: no call is held back
     longer than that, whatever pins come and go (no starvation);
  5. another call is already admitted in the same step: pins never leave the
     engine idle (no deadlock), so the head of an empty batch is always
     admitted when it fits in the pool.

  The pins' share is bounded by ``pin_budget``. A call held back does not
  stop the scheduler's walk (see ``Admission`` in :mod:`agentrt.scheduling.scheduler`):
  behind it, running calls and the calls of programs with a live pin (the
  returning programs the hold is for) still go ahead; other new calls wait
  their turn behind it. ``max_hold_s = 0`` (the default) turns holding off.

``mode = "off"`` keeps no pins: the policy is then exactly least recently
released first, the caches' former behaviour.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections import OrderedDict, deque
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass
from typing import Literal

import msgspec

from agentrt.scheduling.call import Call
from agentrt.scheduling.scheduler import Scheduler

RetentionMode = Literal["off", "ttl"]
RETENTION_MODES: tuple[RetentionMode, ...] = ("off", "ttl")
Unit = Hashable


class RetentionConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How an engine keeps programs' KV across their tool calls (TOML table ``[retention]``).

    ``pin_budget``: the fraction of the pool's blocks pins may cover.
    ``max_ttl_s``: the longest a context stays pinned while its program is away.
    ``prior_interrupt_s``: the interrupt assumed before any has been observed.
    ``after_tool_s``: how long a pin outlives its program's tool once the client says it ended.
    ``window``: observed interrupts kept per tool, per program and overall.
    ``min_samples``: a tool's (then a program's) own samples are used once it has this many;
    before that, the next wider set is.
    ``max_hold_s``: the longest after its arrival a call is kept from a live pin's blocks
    (0, the default: pins never hold against admissions, they only order evictions).
    ``queueing_cost``: the weight of the queueing a pin causes in its TTL (see the module's
    docstring): 0, the default, charges none; 1 charges every waiting call with the pool's
    share the pin holds.
    """

    mode: RetentionMode = "ttl"
    pin_budget: float = 0.5
    max_ttl_s: float = 60.0
    prior_interrupt_s: float = 1.0
    after_tool_s: float = 2.0
    window: int = 64
    min_samples: int = 3
    max_tracked: int = 100_000  # programs (and tool names) whose interrupts are remembered
    max_hold_s: float = 0.0
    queueing_cost: float = 0.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.pin_budget <= 1.0:
            raise ValueError("pin_budget must be within [0, 1]")
        if not (self.max_ttl_s >= 0 and math.isfinite(self.max_ttl_s)):
            raise ValueError("max_ttl_s must be a finite number >= 0")
        for name in ("prior_interrupt_s", "after_tool_s", "max_hold_s", "queueing_cost"):
            value = getattr(self, name)
            if not (value >= 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number >= 0")
        if self.window < 1 or self.min_samples < 1 or self.max_tracked < 1:
            raise ValueError("window, min_samples and max_tracked must be >= 1")


class InterruptPredictor:
    """Recent interrupt durations per tool name, per program and overall (bounded memory)."""

    def __init__(self, window: int, min_samples: int, prior_s: float, max_tracked: int) -> None:
        self.window = window
        self.min_samples = min_samples
        self.prior = (prior_s,)
        self.max_tracked = max_tracked
        self._tools: OrderedDict[str, deque[float]] = OrderedDict()
        self._programs: OrderedDict[str, deque[float]] = OrderedDict()
        self._all: deque[float] = deque(maxlen=window)

    def observe(self, seconds: float, *, tool: str | None, program_id: str | None) -> None:
        if not (seconds >= 0 and math.isfinite(seconds)):
            raise ValueError("an interrupt lasts a finite number of seconds >= 0")
        self._all.append(seconds)
        if tool is not None:
            self._window(self._tools, tool).append(seconds)
        if program_id is not None:
            self._window(self._programs, program_id).append(seconds)

    def samples(self, *, tool: str | None, program_id: str | None) -> Sequence[float]:
        """The narrowest set with enough samples: the tool's, the program's, all, the prior."""
        for table, key in ((self._tools, tool), (self._programs, program_id)):
            if key is not None:
                found = table.get(key)
                if found is not None and len(found) >= self.min_samples:
                    return found
        return self._all if self._all else self.prior

    def forget_program(self, program_id: str) -> None:
        self._programs.pop(program_id, None)

    def _window(self, table: OrderedDict[str, deque[float]], key: str) -> deque[float]:
        found = table.get(key)
        if found is None:
            if len(table) >= self.max_tracked:
                table.popitem(last=False)
            found = table[key] = deque(maxlen=self.window)
        else:
            table.move_to_end(key)
        return found


def choose_ttl(
    samples: Sequence[float], benefit_s: float, cost_rate: float, max_ttl_s: float
) -> float | None:
    """The TTL ``t`` maximising ``P(D <= t) * benefit_s - cost_rate * E[min(D, t)]``.

    ``D`` is distributed as ``samples``; candidate TTLs are the samples up to
    ``max_ttl_s`` (the utility only jumps up at a sample and falls between
    them). ``None`` when no TTL has a positive utility: do not pin.
    """
    xs = sorted(samples)
    n = len(xs)
    if not n or benefit_s <= 0:
        return None
    best_u, best_t = 0.0, None
    prefix = 0.0
    for i, t in enumerate(xs):
        if t > max_ttl_s:
            break
        prefix += t
        held = (prefix + (n - i - 1) * t) / n  # E[min(D, t)]
        utility = (i + 1) / n * benefit_s - cost_rate * held
        if utility > best_u:
            best_u, best_t = utility, t
    return best_t


@dataclass(slots=True)
class Pressure:
    """The pool's state when a call finishes: calls waiting for the engine, and its slots."""

    waiting: int = 0
    batch_slots: int = 1


@dataclass(slots=True)
class RetentionCounters:
    """Running totals, for metrics: pins made, refused for the budget, reused (the
    program called again in time), expired, yielded to pressure, displaced by a better pin,
    held for a tool the client said was running; calls that pins held back from admission
    (each counted once) and the seconds from each one's first hold to its admission;
    contexts lost and offered to the cache (pinned or not, see :attr:`RetentionPolicy.on_lost`)."""

    pins: int = 0
    refused: int = 0
    reused: int = 0
    expired: int = 0
    yielded: int = 0
    displaced: int = 0
    held: int = 0
    held_back: int = 0
    held_back_s: float = 0.0
    lost: int = 0


class Hold(enum.IntEnum):
    """What :meth:`RetentionPolicy.admission_hold` says of a call that holds no KV yet
    (false only for ``NONE``)."""

    NONE = 0  # the pins let it in
    BEHIND = 1  # a call was held back before it in this decision and its program has no pin
    PINS = 2  # live pins hold blocks it would need


class _Pin:
    __slots__ = (
        "awaited",
        "blocks",
        "deadline",
        "level",
        "program_id",
        "reload_s",
        "return_at",
        "units",
    )

    def __init__(self, program_id: str, blocks: int, deadline: float, return_at: float) -> None:
        self.program_id = program_id
        self.blocks = blocks
        self.reload_s = 0.0  # what losing it costs the program's next call
        self.deadline = deadline
        self.return_at = return_at
        self.level = 0.0
        self.awaited = False
        self.units: dict[Unit, int] = {}  # released under the pin -> release number

    def evict_key(self) -> tuple[float, float]:
        """Larger is evicted sooner: ranked last by the policy, then expected back latest."""
        return (self.level, self.return_at)


def policy_priority(scheduler: Scheduler) -> Callable[[str], float]:
    """A program's rank between calls under ``scheduler``'s policy: its queue level, its
    Gittins index negated (0 for policies blind to programs); lower ranks first."""
    policy = scheduler.policy
    if not policy.program_aware:
        return lambda program_id: 0.0
    table = scheduler.table
    boundaries = scheduler.config.boundaries

    def level(program_id: str) -> float:
        entry = table.get(program_id)
        return 0.0 if entry is None else policy.program_rank(entry.service, boundaries)

    return level


class RetentionPolicy:
    """Pins, interrupt prediction and eviction order for one KV pool of ``capacity_blocks``."""

    def __init__(
        self,
        config: RetentionConfig,
        capacity_blocks: int,
        priority: Callable[[str], float] | None = None,
    ) -> None:
        if capacity_blocks < 0:
            raise ValueError("capacity_blocks must be >= 0")
        self.config = config
        self.enabled = config.mode == "ttl"
        self.capacity = capacity_blocks
        self.budget = int(config.pin_budget * capacity_blocks)
        self.priority = priority or (lambda program_id: 0.0)
        self.predictor = InterruptPredictor(
            config.window, config.min_samples, config.prior_interrupt_s, config.max_tracked
        )
        self.counters = RetentionCounters()
        self.pinned_blocks = 0
        # Called with (program id, its units) when its context is lost (see the module's
        # docstring), before any unit is evicted: the cache may copy them to host memory so
        # that the program's next call reloads them instead of recomputing them.
        self.on_lost: Callable[[str, list[Unit]], None] | None = None
        # Units of no live pin -> their release number; a heap of (number, unit) orders them.
        self._lru: dict[Unit, int] = {}
        # Unpinned units of live programs, by program (in release order) and by unit: what
        # is offered when the first of them is chosen as a victim.
        self._context: dict[str, dict[Unit, None]] = {}
        self._context_of: dict[Unit, str] = {}
        self._lru_heap: list[tuple[int, Unit]] = []
        self._released = 0
        self._owner: dict[Unit, _Pin] = {}
        self._pins: dict[str, _Pin] = {}
        self._order: list[tuple[float, float, int, _Pin]] = []  # max-heap on evict_key
        self._deadlines: list[tuple[float, int, _Pin]] = []
        self._seq = 0
        # Program -> (end of its last call, tool it called then), for the next interrupt.
        self._last_end: OrderedDict[str, tuple[float, str | None]] = OrderedDict()
        # Program -> (tools its threads are in now, the latest one's name), from tool signals.
        self._in_tool: OrderedDict[str, tuple[int, str | None]] = OrderedDict()
        # Call id -> (its program, when pins first held it back), until it is admitted.
        self._held_since: OrderedDict[str, tuple[str, float]] = OrderedDict()

    # --- what the cache tells the policy ---

    def __len__(self) -> int:
        """Evictable units."""
        return len(self._lru) + len(self._owner)

    def __contains__(self, unit: object) -> bool:
        return unit in self._lru or unit in self._owner

    def release(self, unit: Unit, program_id: str | None = None) -> None:
        """Nobody holds ``unit`` now; the last holder was a call of ``program_id``. A unit
        of a live pin belongs to it until the pin closes; it then takes the place among
        ordinary units that this release gave it. (A pin's size is what
        :meth:`call_finished` was told; units only say which cache entries it covers.)"""
        self.discard(unit)
        self._released += 1
        pin = self._pins.get(program_id) if program_id is not None else None
        if pin is not None:
            self._owner[unit] = pin
            pin.units[unit] = self._released
            return
        self._to_lru(unit, self._released)
        if program_id is not None and self.enabled:
            self._context.setdefault(program_id, {})[unit] = None
            self._context_of[unit] = program_id

    def acquire(self, unit: Unit) -> None:
        """``unit`` is held again (a prefix hit): no longer evictable."""
        self.discard(unit)

    def discard(self, unit: Unit) -> None:
        """``unit`` left the cache (evicted, freed): forget it."""
        if self._lru.pop(unit, None) is None:
            if self._owner:
                pin = self._owner.pop(unit, None)
                if pin is not None:
                    pin.units.pop(unit, None)
            return
        program_id = self._context_of.pop(unit, None)
        if program_id is not None:
            units = self._context[program_id]
            del units[unit]
            if not units:
                del self._context[program_id]

    def victim(self, now: float) -> Unit | None:
        """The next unit to evict (the cache evicts it and calls :meth:`discard`); None if none.

        Units of no live pin go first, least recently released first. When only
        pinned units are left, the pin evicted first by expected reuse yields whole.
        """
        if self._deadlines:
            self.expire(now)
        while not self._lru:
            pin = self._pop_order()
            if pin is None:
                return None
            self.counters.yielded += 1
            self._unpin(pin, lost=True)
        heap, lru = self._lru_heap, self._lru
        while lru.get(heap[0][1]) != heap[0][0]:
            heapq.heappop(heap)  # stale: the unit was taken back or evicted
        unit = heap[0][1]
        program_id = self._context_of.get(unit)
        if program_id is not None:  # the first of a live program's unpinned context to go
            self._lose(program_id, list(self._forget_context(program_id)))
        return unit

    # --- what the driver tells the policy about programs ---

    def call_finished(
        self,
        program_id: str,
        now: float,
        *,
        blocks: int,
        reload_s: float,
        pressure: Pressure | None = None,
        tool: str | None = None,
    ) -> float | None:
        """A call of ``program_id`` finished, leaving a context of ``blocks`` blocks that costs
        ``reload_s`` seconds to get back if evicted. Pins it (call this before the cache
        releases the call's units); returns the TTL, or None when not pinned."""
        self._remember_end(program_id, now, tool)
        if not self.enabled or blocks <= 0:
            return None
        pressure = pressure or Pressure()
        samples = self.predictor.samples(tool=tool, program_id=program_id)
        waiting = pressure.waiting
        benefit = reload_s * (1.0 + waiting / max(1, pressure.batch_slots))
        cost_rate = (
            self.config.queueing_cost * waiting * blocks / self.capacity
            if self.capacity
            else math.inf
        )
        ttl = choose_ttl(samples, benefit, cost_rate, self.config.max_ttl_s)
        if ttl is None:
            return None
        pin = self._pins.get(program_id)
        extra = blocks  # a sibling's pin may share units with it: counted twice, conservatively
        return_at = now + _median(samples)
        level = self.priority(program_id)
        if not self._make_room(extra, (level, return_at), program_id):
            self.counters.refused += 1
            return None
        if pin is None:
            pin = self._pins[program_id] = _Pin(program_id, 0, now + ttl, return_at)
        else:
            pin.deadline = max(pin.deadline, now + ttl)
            pin.return_at = min(pin.return_at, return_at) if pin.awaited else return_at
        pin.blocks += extra
        pin.reload_s += reload_s
        pin.level = level
        self.pinned_blocks += extra
        self.counters.pins += 1
        if program_id in self._in_tool:  # another thread of the program is in a tool
            pin.deadline = max(pin.deadline, now + self.config.max_ttl_s)
        self._push(pin)
        return ttl

    def call_arrived(self, program_id: str, now: float) -> None:
        """A new call of ``program_id`` arrived: learn the interrupt; its pin is now awaited."""
        last = self._last_end.pop(program_id, None)
        if last is not None:
            ended, tool = last
            self.predictor.observe(max(0.0, now - ended), tool=tool, program_id=program_id)
        pin = self._pins.get(program_id)
        if pin is None:
            return
        if now > pin.deadline and not pin.awaited:
            self.counters.expired += 1
            self._unpin(pin)
            return
        if not pin.awaited:
            self.counters.reused += 1
        pin.awaited = True
        pin.return_at = now
        pin.level = self.priority(program_id)
        self._push(pin)

    def tool_started(self, program_id: str, now: float, tool: str | None = None) -> None:
        """The client says a thread of ``program_id`` entered ``tool``: hold the program's
        pin (if it has a live one) until the tool ends or ``max_ttl_s`` passes, and learn
        the coming interrupt under the tool's name."""
        count, _ = self._in_tool.pop(program_id, (0, None))
        self._in_tool[program_id] = (count + 1, tool)
        if len(self._in_tool) > self.config.max_tracked:
            self._in_tool.popitem(last=False)
        last = self._last_end.get(program_id)
        if last is not None and tool is not None:
            self._last_end[program_id] = (last[0], tool)
        pin = self._pins.get(program_id)
        if pin is None or pin.awaited:
            return
        samples = self.predictor.samples(tool=tool, program_id=program_id)
        pin.deadline = max(pin.deadline, now + self.config.max_ttl_s)
        pin.return_at = now + _median(samples)
        self.counters.held += 1
        self._push(pin)

    def tool_ended(self, program_id: str, now: float) -> None:
        """The client says a thread of ``program_id`` left its tool. When no other thread of
        it is in one, the hold ends: the pin is expected back now and lives ``after_tool_s``
        more (the call that follows turns it into an awaited one)."""
        found = self._in_tool.pop(program_id, None)
        if found is None:
            return
        count, tool = found
        if count > 1:
            self._in_tool[program_id] = (count - 1, tool)
            return
        pin = self._pins.get(program_id)
        if pin is None or pin.awaited:
            return
        pin.deadline = now + self.config.after_tool_s
        pin.return_at = now
        self._push(pin)

    def in_tool(self, program_id: str) -> bool:
        """True while the client says a thread of ``program_id`` is in a tool."""
        return program_id in self._in_tool

    def call_admitted(self, program_id: str) -> None:
        """A call of ``program_id`` took its KV (the cache acquired its units): the pin closes."""
        pin = self._pins.get(program_id)
        if pin is not None:
            self._unpin(pin)

    def program_ended(self, program_id: str) -> None:
        """The program is done: its pin goes, and what was learned about it."""
        self._last_end.pop(program_id, None)
        self._in_tool.pop(program_id, None)
        self.predictor.forget_program(program_id)
        if self._held_since:
            for call_id in [c for c, (p, _) in self._held_since.items() if p == program_id]:
                del self._held_since[call_id]
        pin = self._pins.get(program_id)
        if pin is not None:
            self._unpin(pin)
        self._forget_context(program_id)

    def expire(self, now: float) -> list[str]:
        """Unpin the programs whose TTL passed before they called again; returns their ids."""
        expired: list[str] = []
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] < now:
            deadline, _, pin = heapq.heappop(deadlines)
            if self._pins.get(pin.program_id) is not pin or pin.awaited or pin.deadline != deadline:
                continue
            self.counters.expired += 1
            self._unpin(pin, lost=True)
            expired.append(pin.program_id)
        return expired

    def holding(
        self, program_id: str, now: float, *, arrival: float, others_running: bool
    ) -> list[Unit]:
        """The pinned units a call of ``program_id`` that holds no KV yet, arrived at
        ``arrival``, may not take at ``now`` (the hold rule in the module's docstring);
        ``others_running``: another call runs in this step. The admission counts them as
        taken; empty when nothing holds."""
        if (
            not self._pins
            or not others_running
            or now - arrival >= self.config.max_hold_s
            or not self.enabled
        ):
            return []
        if self._deadlines:
            self.expire(now)
        level = self.priority(program_id)
        units: list[Unit] = []
        for pin in self._pins.values():
            if (
                pin.program_id != program_id
                and pin.level <= level
                and (pin.awaited or pin.return_at - now <= pin.reload_s)
            ):
                units.extend(pin.units)
        return units

    def admission_hold(
        self,
        call: Call,
        now: float,
        *,
        held_any: bool,
        others_running: bool,
        taken: int,
        capacity: int,
        uncounted: Callable[[list[Unit]], int],
    ) -> Hold:
        """Whether ``call``, which holds no KV yet and fits the pool as ``taken`` blocks
        of ``capacity`` count it, is kept out by live pins: the bookkeeping around
        :meth:`holding` that the engine's and the simulator's admissions share.

        ``held_any``: a call was held back earlier in the same decision; behind it only
        the pins' own programs go ahead. ``others_running``: another call is admitted in
        this decision. ``uncounted(units)``: the blocks of the pinned ``units`` that
        ``taken`` does not count yet (neither the call's own prefix hits nor the blocks
        of the calls admitted before it). The call is held when those would not fit.
        A call held back (``PINS``) is counted once in ``counters.held_back``, and the
        time from its first hold to its admission (``NONE``) in ``counters.held_back_s``.
        """
        if held_any and call.program_id not in self._pins:
            return Hold.BEHIND
        pinned = self.holding(
            call.program_id, now, arrival=call.arrival, others_running=others_running
        )
        if pinned and taken + uncounted(pinned) > capacity:
            held = self._held_since
            if call.call_id not in held:
                self.counters.held_back += 1
                held[call.call_id] = (call.program_id, now)
                if len(held) > self.config.max_tracked:
                    held.popitem(last=False)
            return Hold.PINS
        if self._held_since:
            self.hold_ended(call.call_id, now)
        return Hold.NONE

    def hold_ended(self, call_id: str, now: float) -> None:
        """``call_id`` was admitted (an admission that skips :meth:`admission_hold` says so):
        the time since pins first held it back, if they did, counts as held."""
        found = self._held_since.pop(call_id, None)
        if found is not None:
            self.counters.held_back_s += now - found[1]

    @property
    def holding_back(self) -> bool:
        """Some call that pins held back has not been admitted yet."""
        return bool(self._held_since)

    def pinned(self, program_id: str) -> bool:
        return program_id in self._pins

    def pinned_units(self) -> int:
        return len(self._owner)

    # --- internals ---

    def _remember_end(self, program_id: str, now: float, tool: str | None) -> None:
        last = self._last_end
        last[program_id] = (now, tool)
        last.move_to_end(program_id)
        if len(last) > self.config.max_tracked:
            last.popitem(last=False)

    def _push(self, pin: _Pin) -> None:
        self._seq += 1
        level, return_at = pin.evict_key()
        heapq.heappush(self._order, (-level, -return_at, self._seq, pin))
        if not pin.awaited:
            heapq.heappush(self._deadlines, (pin.deadline, self._seq, pin))
        if len(self._order) > 4 * len(self._pins) + 64:
            self._compact()

    def _compact(self) -> None:
        self._order = [e for e in self._order if self._current(e)]
        heapq.heapify(self._order)
        self._deadlines = [
            d
            for d in self._deadlines
            if self._pins.get(d[2].program_id) is d[2] and not d[2].awaited
        ]
        heapq.heapify(self._deadlines)

    def _current(self, entry: tuple[float, float, int, _Pin]) -> bool:
        neg_level, neg_return, _, pin = entry
        return self._pins.get(pin.program_id) is pin and pin.evict_key() == (
            -neg_level,
            -neg_return,
        )

    def _pop_order(self) -> _Pin | None:
        order = self._order
        while order:
            entry = heapq.heappop(order)
            if self._current(entry):
                return entry[3]
        return None

    def _make_room(self, blocks: int, key: tuple[float, float], program_id: str) -> bool:
        """Fit ``blocks`` more pinned blocks in the budget, displacing pins that would be
        evicted before one keyed ``key``; False (nothing displaced) if they cannot fit."""
        need = self.pinned_blocks + blocks - self.budget
        if need <= 0:
            return True
        if blocks > self.budget:
            return False
        victims: list[_Pin] = []
        freed = 0
        for pin in sorted(self._pins.values(), key=_Pin.evict_key, reverse=True):
            if freed >= need:
                break
            if pin.program_id == program_id:
                continue
            if pin.evict_key() <= key:
                break
            victims.append(pin)
            freed += pin.blocks
        if freed < need:
            return False
        for pin in victims:
            self.counters.displaced += 1
            self._unpin(pin, lost=True)
        return True

    def _to_lru(self, unit: Unit, number: int) -> None:
        self._lru[unit] = number
        heapq.heappush(self._lru_heap, (number, unit))
        if len(self._lru_heap) > 2 * len(self._lru) + 64:
            lru = self._lru
            self._lru_heap = [(n, u) for u, n in lru.items()]
            heapq.heapify(self._lru_heap)

    def _unpin(self, pin: _Pin, *, lost: bool = False) -> None:
        """Close a pin; its units become ordinary cache, in their release order. ``lost``:
        the program may still come back for them (yielded, expired, displaced), so the
        cache is offered them first (:attr:`on_lost`)."""
        if lost and pin.units:
            self._lose(pin.program_id, list(pin.units))
        del self._pins[pin.program_id]
        self.pinned_blocks -= pin.blocks
        owner = self._owner
        for unit, number in pin.units.items():
            del owner[unit]
            self._to_lru(unit, number)
        pin.units.clear()


    def _lose(self, program_id: str, units: list[Unit]) -> None:
        """The program's context ``units`` is lost: count it and offer it to the cache."""
        self.counters.lost += 1
        if self.on_lost is not None:
            self.on_lost(program_id, units)

    def _forget_context(self, program_id: str) -> dict[Unit, None]:
        units = self._context.pop(program_id, {})
        for unit in units:
            del self._context_of[unit]
        return units


def _median(samples: Sequence[float]) -> float:
    xs = sorted(samples)
    return xs[len(xs) // 2]
