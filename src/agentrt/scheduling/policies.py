"""The scheduling policies: small deterministic classes, no state of their own.

A policy answers four questions for the :class:`~agentrt.scheduling.Scheduler`,
which owns the queues and does the bookkeeping:

- where a new call starts (its priority snapshot and queue level);
- how calls rank (lower first; ties go to the earlier arrival, of the
  program first where ``level_order`` says so);
- whether calls move between levels (demotion by quantum, anti-starvation
  promotion) and whether the program's history counts in the starvation ratio;
- how a completed call updates its program's service scalar.

| policy | rank                          | new call enters            | starvation ratio         |
|--------|-------------------------------|----------------------------|--------------------------|
| fcfs   | arrival only (vLLM default)   | -                          | -                        |
| las    | the call's attained service   | -                          | -                        |
| mlfq   | queue level (FastServe-style) | the top queue              | W_c / T_c                |
| plas   | queue level                   | level of the program's sum | (W_p + W_c) / (T_p + T_c) |
| atlas  | queue level                   | level of the critical path | (W_p + W_c) / (T_p + T_c) |
| gittins | promoted first, then the Gittins index of the program's service | level 1 (0: promoted) | (W_p + W_c) / max(median size, T_p + T_c) |

Ties in rank go to the earlier arrival: of the call, or for PLAS and ATLAS
with ``level_order = "program"`` of the program first (Autellix's order
within a queue). With ``honor_request_priority`` the request's own priority
ranks before all of this.

Gittins ranks by the Gittins index of the program's attained service (its
PLAS sum plus the call's own service so far), learned from the sizes of the
programs that ended (:mod:`agentrt.scheduling.gittins`): least attained
service where program sizes vary widely, nearest to done first where they are
alike. Until ``gittins_min_programs`` programs have ended it is FCFS (least
attained service first could keep every program from ending, and so from
being learnt). It is the one policy with state: the sizes it has seen.

PLAS and ATLAS differ only in the completion rule (:func:`plas_service`,
:func:`atlas_service`); for a sequential program the two are equal, because a
call's snapshot is then the program's current value.
"""

from __future__ import annotations

import math
from bisect import bisect_right

from agentrt.scheduling.call import Call
from agentrt.scheduling.config import PolicyName, SchedulerConfig
from agentrt.scheduling.gittins import ProgramSizes


def queue_level(priority: float, boundaries: list[float]) -> int:
    """The level whose range ``[b(i-1), b(i))`` holds ``priority`` (0 = top).

    Also what a router maps a program's priority through before handing it
    to an engine that only understands a small integer priority (vLLM's field).
    """
    return bisect_right(boundaries, priority)


def plas_service(program_service: float, call: Call) -> float:
    """PLAS: a program's priority is the sum of the service of its completed calls."""
    return program_service + call.service


def atlas_service(program_service: float, call: Call) -> float:
    """ATLAS: the longest critical path seen so far (Autellix, Algorithm 1, line 4)."""
    return max(program_service, call.start_value + call.service)


class Policy:
    """Base policy: FCFS by arrival, no levels, program service kept as a plain sum."""

    name: PolicyName = "fcfs"
    uses_levels = False  # discretised queues: quantum demotion and starvation promotion
    promotes_starving = False  # anti-starvation: a call waiting too long goes to level 0
    num_levels = 1  # for a policy without discretised queues: the levels calls can be in
    program_aware = False  # new calls start at the program's priority; W_p/T_p count
    rank_depends_on_running = False  # a call's rank changes when it starts or stops running

    def entry_level(self, start_value: float, boundaries: list[float]) -> int:
        return 0

    def starvation_floor(self, configured: float) -> float:
        """The least service a call's starvation ratio divides by."""
        return configured

    def program_rank(self, service: float, boundaries: list[float]) -> float:
        """Where a program whose priority scalar is ``service`` ranks (lower first), between calls:
        its queue level (what KV retention weighs a program's pin by)."""
        return float(queue_level(service, boundaries)) if self.program_aware else 0.0

    def start_value(self, program_service: float) -> float:
        return program_service if self.program_aware else 0.0

    def rank(self, call: Call) -> float:
        return 0.0

    def rank_changes_with_service(self) -> bool:
        return False

    def updated_service(self, program_service: float, call: Call) -> float:
        return plas_service(program_service, call)


class Fcfs(Policy):
    """First come, first served: what vLLM does by default."""

    name: PolicyName = "fcfs"


class Las(Policy):
    """Call-level least attained service: the call with the least service so far runs first."""

    name: PolicyName = "las"

    def rank(self, call: Call) -> float:
        return call.service

    def rank_changes_with_service(self) -> bool:
        return True


class Mlfq(Policy):
    """FastServe-style multi-level feedback queue: every new call enters the top queue."""

    name: PolicyName = "mlfq"
    uses_levels = True
    promotes_starving = True

    def rank(self, call: Call) -> float:
        return float(call.level)


class Plas(Mlfq):
    """Program-level LAS over discretised queues (single-threaded programs)."""

    name: PolicyName = "plas"
    program_aware = True

    def entry_level(self, start_value: float, boundaries: list[float]) -> int:
        return queue_level(start_value, boundaries)


class Atlas(Plas):
    """Program-level LAS on the critical path (multi-threaded programs)."""

    name: PolicyName = "atlas"

    def updated_service(self, program_service: float, call: Call) -> float:
        return atlas_service(program_service, call)


class Gittins(Policy):
    """Program-level Gittins index of attained service, over the sizes of ended programs."""

    name: PolicyName = "gittins"
    program_aware = True
    rank_depends_on_running = True
    promotes_starving = True
    num_levels = 2  # 0: promoted by the anti-starvation rule, ahead of any index; 1: by index

    def __init__(self, window: int, min_programs: int, hold: float) -> None:
        self.sizes = ProgramSizes(window, min_programs)
        self.hold = hold

    def entry_level(self, start_value: float, boundaries: list[float]) -> int:
        return 1

    def starvation_floor(self, configured: float) -> float:
        # New programs wait behind older ones by design where sizes are alike: a call is
        # starving only once it has waited beta times a typical program's size.
        return max(configured, self.sizes.median)

    def program_rank(self, service: float, boundaries: list[float]) -> float:
        return -self.sizes.index(service) if self.sizes.ready else 0.0

    def rank(self, call: Call) -> float:
        if call.level == 0:
            return -math.inf
        if not self.sizes.ready:
            return 0.0
        index = self.sizes.index(call.start_value + call.service)
        # A running call keeps its place against a waiting one whose index is barely higher:
        # the index moves at every grid point, and a preemption each time costs a swap.
        return -index * (1.0 + self.hold) if call.running else -index

    def rank_changes_with_service(self) -> bool:
        return True


_POLICIES: dict[str, type[Policy]] = {p.name: p for p in (Fcfs, Las, Mlfq, Plas, Atlas, Gittins)}


def make_policy(name: str, config: SchedulerConfig | None = None) -> Policy:
    """The policy ``name``; Gittins takes its knobs from ``config`` (defaults if None)."""
    if name == "gittins":
        c = config or SchedulerConfig()
        return Gittins(c.gittins_window, c.gittins_min_programs, c.gittins_hold)
    try:
        return _POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(_POLICIES)}") from None
