"""The load balancer: which engine serves a call.

- ``round_robin``: engines in turn.
- ``least_used``: the engine with the fewest live calls (ties: the engine
  added first), the paper's "Least Used" baseline.
- ``locality`` (Autellix, Algorithm 2): calls of at most ``threshold``
  prompt tokens go to the least used engine (short prompts share little more
  than the system prompt, which every engine caches); longer calls go to the
  engine their program is pinned to, pinned on the first long call, so the
  program's history stays in one engine's prefix cache. The balancer pins
  and unpins; the pin is kept in the program's process-table entry
  (``ProgramEntry.engine_id``), so it goes when the program does.
  Before that rule, the *retention* rule: when the engine that served a
  program's last call reported that it keeps the call's context pinned
  (its KV retention, :class:`~agentrt.scheduling.RetentionPolicy`, for a
  time-to-live), the program's next call goes back to that engine within
  the TTL whatever its length, since that engine alone is sure to hold the
  program's newest prefix (:meth:`Balancer.retained`). One call takes it:
  the engine closes the pin when the call takes its KV, and pins again when
  the call ends. While the client says the program is in a tool
  (:meth:`Balancer.hold_retained`), the engine holds the pin past its
  time-to-live, and so does this rule: the next call goes back however long
  the tool took.

The balancer counts live calls itself: :meth:`route` adds one to the chosen
engine, :meth:`release` takes it back when the call ends. When an engine
fails or is removed, its pins are dropped and its programs re-route on their
next call.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from agentrt.scheduling.config import BalancerConfig
from agentrt.scheduling.process_table import ProcessTable


class NoEngineAvailable(RuntimeError):
    """Every engine failed or was removed; the caller answers 503."""


class Balancer:
    """Routes calls over a changing set of engines."""

    def __init__(
        self,
        config: BalancerConfig | None = None,
        engines: Iterable[str] = (),
        table: ProcessTable | None = None,
    ) -> None:
        self.config = config or BalancerConfig()
        self.table = table if table is not None else ProcessTable()  # an empty table is falsy
        self._load: dict[str, int] = {}  # engine id -> live calls routed there, insertion order
        self._next_rr = 0
        for engine_id in engines:
            self.add_engine(engine_id)

    @property
    def engines(self) -> list[str]:
        return list(self._load)

    def load(self, engine_id: str) -> int:
        return self._load[engine_id]

    def add_engine(self, engine_id: str) -> None:
        if engine_id in self._load:
            raise ValueError(f"engine {engine_id!r} is already known")
        self._load[engine_id] = 0

    def remove_engine(self, engine_id: str) -> list[str]:
        """Stop routing to ``engine_id``; returns the programs that were pinned to it."""
        self._load.pop(engine_id, None)
        unpinned: list[str] = []
        for entry in self.table.programs():  # engines leave rarely; pins are not indexed by engine
            if entry.retained_on == engine_id:
                entry.retained_on = None
            if entry.engine_id == engine_id:
                entry.engine_id = None
                unpinned.append(entry.program_id)
        return sorted(unpinned)

    def engine_failed(self, engine_id: str) -> list[str]:
        """The engine died: unpin its programs so their next calls re-route; returns them."""
        return self.remove_engine(engine_id)

    def route(self, program_id: str | None, prompt_tokens: int, now: float) -> str:
        """Pick the engine for a call and count it there. ``program_id`` None: an untagged call."""
        if not self._load:
            raise NoEngineAvailable("no engine is available")
        policy = self.config.policy
        if policy == "round_robin":
            engine_id = self._round_robin()
        elif policy == "least_used" or program_id is None:
            engine_id = self._least_used()
        else:
            engine_id = self._locality(program_id, prompt_tokens, now)
        self._load[engine_id] += 1
        return engine_id

    def retained(self, program_id: str, engine_id: str, until: float) -> None:
        """``engine_id`` keeps ``program_id``'s last context pinned until ``until``: the program's
        next call goes there (under ``locality``). Unknown programs (ended) are ignored."""
        entry = self.table.get(program_id)
        if entry is not None and engine_id in self._load:
            entry.retained_on = engine_id
            entry.retained_until = until

    def hold_retained(self, program_id: str) -> None:
        """The client says ``program_id`` entered a tool: the engine that retains its context
        holds it until the program's next call, so the next call goes there whenever it comes."""
        entry = self.table.get(program_id)
        if entry is not None and entry.retained_on is not None:
            entry.retained_until = math.inf

    def release(self, engine_id: str) -> None:
        """A call routed to ``engine_id`` ended (an unknown or removed engine is ignored)."""
        if self._load.get(engine_id, 0) > 0:
            self._load[engine_id] -= 1

    def _round_robin(self) -> str:
        engines = list(self._load)
        engine_id = engines[self._next_rr % len(engines)]
        self._next_rr = (self._next_rr + 1) % len(engines)
        return engine_id

    def _least_used(self) -> str:
        load = self._load
        return min(load, key=load.__getitem__)

    def _locality(self, program_id: str, prompt_tokens: int, now: float) -> str:
        entry = self.table.get(program_id)
        if entry is not None and entry.retained_on is not None:
            engine_id, entry.retained_on = entry.retained_on, None
            if engine_id in self._load and now <= entry.retained_until:
                return engine_id
        if prompt_tokens <= self.config.locality_threshold:
            return self._least_used()
        pinned = entry.engine_id if entry is not None else None
        if pinned is not None and pinned in self._load:
            return pinned
        engine_id = self._least_used()
        self.table.start(program_id, now).engine_id = engine_id
        return engine_id
