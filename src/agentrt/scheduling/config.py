"""Configuration of the scheduler and the load balancer (one msgspec Struct each).

Units. Every service-like knob (queue boundaries, quanta, the starvation
floor) is in the configured *service unit*:

- ``service_unit = "time"`` (as in the Autellix paper): seconds of
  model-executor time attributed to a call: the whole duration of every
  engine step the call took part in (what vLLM accumulates per request as
  its model execute time). Not a per-token share of the step: that would
  make a call's service shrink as the batch grows, so priorities would
  flatten under exactly the load where they matter. This fits a GPU, where
  a decode step takes about as long whoever shares it;
- ``service_unit = "tokens"``: tokens the model processed for the call
  (prefill and decode alike; prefix-cache hits are not processed).
  Deterministic, and what fits a CPU engine: there a step's time grows with
  the tokens in it, so the whole-step charge would bill every call for its
  batch-mates' prompt chunks, and a program's service would measure how long
  it sat in the batch rather than the work it asked for (least attained
  service then drifts towards processor sharing). Waiting is counted in
  engine steps: each step a call spends waiting counts as the one token a
  decode step would have given it, so the anti-starvation ratio compares
  like with like;
- ``service_unit = "auto"`` (default): tokens for an engine on a CPU (the
  embedded engine, a router's CPU replicas, a simulator profile of a CPU
  engine), time elsewhere (a GPU engine, remote engines):
  :meth:`SchedulerConfig.on_device`.

Knobs left as ``None`` take the default of the chosen unit (the
``DEFAULTS_BY_UNIT`` table below), chosen with the simulator (``agentrt sim``).
"""

from __future__ import annotations

import math
from typing import Literal

import msgspec

PolicyName = Literal["fcfs", "las", "mlfq", "plas", "atlas", "gittins"]
ServiceUnit = Literal["time", "tokens"]
ServiceUnitSetting = Literal["auto", "time", "tokens"]
LevelOrder = Literal["program", "call"]
BalancerPolicy = Literal["round_robin", "least_used", "locality"]

POLICIES: tuple[PolicyName, ...] = ("fcfs", "las", "mlfq", "plas", "atlas", "gittins")


class UnitDefaults(msgspec.Struct, frozen=True):
    """Defaults of the unit-dependent knobs, in that unit."""

    first_boundary: float
    first_quantum: float
    starvation_floor: float


# time: seconds of model time, each call charged the whole duration of every
# step it ran in; 8 levels from 0.5 s reach 32 s, so short programs stay in the
# top levels and long ones sink (src/agentrt/sim/README.md has the sweep behind
# these values).
# tokens: the same scale in processed tokens. The starvation floor is one decode
# step's worth of service: it only keeps the ratio finite.
DEFAULTS_BY_UNIT: dict[ServiceUnit, UnitDefaults] = {
    "time": UnitDefaults(first_boundary=0.5, first_quantum=0.5, starvation_floor=0.025),
    "tokens": UnitDefaults(first_boundary=256.0, first_quantum=256.0, starvation_floor=1.0),
}


class SchedulerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How one engine's scheduler orders calls (TOML table ``[scheduler]``).

    Queues: ``num_queues`` (K) levels; level ``i`` covers program priorities
    ``[b(i-1), b(i))`` with ``b(i) = first_boundary * boundary_growth**i``
    (``b(-1) = 0``, the last level is unbounded). A call's quantum in level
    ``i`` is ``first_quantum * quantum_growth**i``; when it is used up the
    call drops one level.

    Within a level, calls run in their arrival order (``level_order =
    "call"``, the default), or for the program-aware policies (PLAS, ATLAS)
    in the order their programs arrived, then their own (``"program"``, as
    Autellix orders each queue); FCFS, LAS and MLFQ always go by call. By
    call, a sequential program's next call joins the back of its level, so
    the programs in a level take turns: the shorter ones finish first, and
    programs of one size all finish late. By program, the older program
    finishes first: better when a level's programs are alike in size, worse
    when short ones share it with long ones that came earlier. The engine's
    scheduler preempts, so by program a new call of an older program also
    preempts a running call of a younger one in its level (a swap).

    Anti-starvation: a waiting call is promoted to the top level when
    ``(W_p + W_c) / max(starvation_floor, T_p + T_c) >= beta``, and stays
    there until it ends (no quantum demotes it again). The floor
    keeps the ratio finite for a call of a program that has no service yet
    (such calls sit in the top level anyway, so the floor only decides how
    soon a demoted call with almost no service may come back). ``beta = inf``
    turns promotion off.

    Gittins (``policy = "gittins"``) learns the distribution of program sizes
    from the last ``gittins_window`` programs that ended, and orders calls
    as FCFS until ``gittins_min_programs`` have. A running call is
    preempted only by a call whose index is ``1 + gittins_hold`` times its
    own or more (each preemption costs a swap).
    """

    policy: PolicyName = "atlas"
    service_unit: ServiceUnitSetting = "auto"
    num_queues: int = 8
    first_boundary: float | None = None
    boundary_growth: float = 2.0
    first_quantum: float | None = None
    quantum_growth: float = 2.0
    level_order: LevelOrder = "call"
    gittins_window: int = 256
    gittins_min_programs: int = 8
    gittins_hold: float = 1.0
    beta: float = 8.0
    starvation_floor: float | None = None
    # vLLM-style per-request ``priority`` (lower runs sooner). When honoured it
    # ranks ahead of the policy's order (policy order breaks ties). Off by
    # default: any client could otherwise jump every queue and defeat the
    # program-level fairness and starvation protection; an operator who
    # controls its clients turns it on (fcfs + this = vLLM's "priority" policy).
    # Anti-starvation then promotes within a call's priority class.
    honor_request_priority: bool = False
    # Process table: programs idle (no live call) longer than this are dropped.
    program_ttl_s: float = 600.0
    # At most this many programs are kept; beyond it the least recently active
    # idle programs are evicted (programs with live calls are never evicted).
    max_programs: int = 100_000
    # Per program, the records of at most this many completed calls are kept.
    max_call_records: int = 32

    def __post_init__(self) -> None:
        if self.num_queues < 1:
            raise ValueError("num_queues must be >= 1")
        if self.boundary_growth <= 1.0 or self.quantum_growth < 1.0:
            raise ValueError("boundary_growth must be > 1 and quantum_growth >= 1")
        for name in ("first_boundary", "first_quantum", "starvation_floor"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a positive finite number")
        if not self.beta > 0:
            raise ValueError("beta must be > 0 (inf disables anti-starvation)")
        if self.gittins_window < 1 or not 1 <= self.gittins_min_programs <= self.gittins_window:
            raise ValueError(
                "need gittins_window >= 1 and 1 <= gittins_min_programs <= gittins_window"
            )
        if not 0 <= self.gittins_hold < math.inf:
            raise ValueError("gittins_hold must be a finite number >= 0")
        if self.program_ttl_s <= 0 or self.max_programs < 1 or self.max_call_records < 0:
            raise ValueError("program_ttl_s and max_programs must be positive")

    @property
    def unit(self) -> ServiceUnit:
        """The service unit in effect: ``auto`` is time until :meth:`on_device` resolves it."""
        return "time" if self.service_unit == "auto" else self.service_unit

    def on_device(self, device: str) -> SchedulerConfig:
        """This config for an engine computing on ``device`` (``cpu``, ``cuda:0``, ...):
        ``auto`` becomes tokens on a CPU and time elsewhere; a set unit stays."""
        if self.service_unit != "auto":
            return self
        unit: ServiceUnit = "tokens" if device.split(":")[0] == "cpu" else "time"
        return msgspec.structs.replace(self, service_unit=unit)

    @property
    def unit_defaults(self) -> UnitDefaults:
        return DEFAULTS_BY_UNIT[self.unit]

    @property
    def boundaries(self) -> list[float]:
        """Upper bounds of levels 0..K-2 (the last level is unbounded)."""
        first = self.first_boundary or self.unit_defaults.first_boundary
        return [first * self.boundary_growth**i for i in range(self.num_queues - 1)]

    @property
    def quanta(self) -> list[float]:
        """Quantum of each level 0..K-1."""
        first = self.first_quantum or self.unit_defaults.first_quantum
        return [first * self.quantum_growth**i for i in range(self.num_queues)]

    @property
    def floor(self) -> float:
        """Denominator floor of the anti-starvation ratio."""
        return self.starvation_floor or self.unit_defaults.starvation_floor


class BalancerConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How the router spreads calls over engines (TOML table ``[balancer]``).

    ``locality`` is Autellix's Algorithm 2: calls of at most
    ``locality_threshold`` prompt tokens go to the least used engine; longer
    ones go to the engine their program is pinned to (pinned on first use),
    where its earlier context is likely still in the prefix cache. A call whose
    program's last context an engine reported pinned (KV retention) goes back
    to that engine first, whatever its length.
    """

    policy: BalancerPolicy = "locality"
    locality_threshold: int = 2048

    def __post_init__(self) -> None:
        if self.locality_threshold < 0:
            raise ValueError("locality_threshold must be >= 0")
