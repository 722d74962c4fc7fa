"""The discrete-event loop: programs arrive, calls route to engines, engines run windows.

Policy lives in :mod:`agentrt.scheduling` only: every engine has its own
:class:`~agentrt.scheduling.Scheduler`, all of them share one
:class:`~agentrt.scheduling.ProcessTable` with the
:class:`~agentrt.scheduling.Balancer` (program service is global across
engines, as in the router), and the simulator merely drives them.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from typing import Literal, cast, get_args

import msgspec

from agentrt.scheduling import (
    Balancer,
    BalancerConfig,
    BalancerPolicy,
    Call,
    ProcessTable,
    RetentionConfig,
    RetentionMode,
    SchedulerConfig,
    make_scheduler,
)
from agentrt.sim.engine import LiveCall, PreemptionMode, SimEngine
from agentrt.sim.metrics import ProgramOutcome, RunResult, summarize
from agentrt.sim.profile import EngineProfile
from agentrt.sim.spec import ProgramSpec

# Event kinds, in the order events of the same instant are handled: completions
# first (they free slots and release successors), then new calls, then engines.
_FINISH, _READY, _ENGINE = 0, 1, 2


Oracle = Literal["none", "remaining", "kind"]
ORACLES: tuple[str, ...] = get_args(Oracle)


class SimConfig(msgspec.Struct, kw_only=True, frozen=True, forbid_unknown_fields=True):
    """How the simulated cluster runs (TOML table ``[sim]``).

    ``preemption``: what happens to the KV of a preempted call. ``"auto"``
    follows the systems being modelled: FCFS is vLLM's default and drops the
    KV to recompute it later; the program-aware policies swap it to the host
    pool (Autellix), recomputing only when the pool is full.
    ``steps_per_schedule``: decode steps per scheduling decision (multi-step
    scheduling, the same for every policy).
    ``kv_retention``: ``"ttl"`` keeps a program's context pinned across its tool
    calls and evicts by expected reuse (:class:`~agentrt.scheduling.RetentionPolicy`,
    tuned by ``retention``); ``"off"`` evicts least recently released first.
    ``oracle``: rank every call, ahead of the policy's order, by what no
    scheduler knows, to bound what any order could gain on a workload:
    ``"remaining"`` by the decode tokens of its program's calls not yet
    done, this one's included (shortest remaining program first); ``"kind"``
    by the mean decode tokens of its program's kind over the run (which kind
    of program it is, not how long this one runs); ``"none"``: the policy
    alone.
    """

    engines: int = 1
    balancer: BalancerPolicy = "locality"
    locality_threshold: int = 2048
    preemption: Literal["auto", "swap", "recompute"] = "auto"
    steps_per_schedule: int = 8
    # Service charged per call in time mode: the whole duration of each step it
    # took part in ("step": the paper's model-executor time, what vLLM and the
    # embedded engine accumulate per request, and the unit the scheduler's
    # defaults are in) or its token share of each step ("share": kept to show
    # why not; a decoding call then earns ~1/batch of a step and never leaves
    # the top queue, so every queue policy degenerates to FCFS).
    service_accounting: Literal["share", "step"] = "step"
    kv_retention: RetentionMode = "off"
    retention: RetentionConfig = msgspec.field(default_factory=RetentionConfig)
    oracle: Oracle = "none"

    def __post_init__(self) -> None:
        if self.engines < 1:
            raise ValueError("engines must be >= 1")
        if self.steps_per_schedule < 1:
            raise ValueError("steps_per_schedule must be >= 1")

    def preemption_for(self, policy: str) -> PreemptionMode:
        if self.preemption != "auto":
            return self.preemption
        return "recompute" if policy == "fcfs" else "swap"

    def retention_config(self) -> RetentionConfig:
        return msgspec.structs.replace(self.retention, mode=self.kv_retention)


class _ProgramRun:
    __slots__ = ("children", "decode_left", "done", "outcome", "pending", "spec", "started")

    def __init__(self, spec: ProgramSpec) -> None:
        self.spec = spec
        calls = spec.calls
        self.children: list[list[int]] = [[] for _ in calls]
        for call in calls:
            for parent in call.parents:
                self.children[parent].append(call.index)
        self.pending = [len(c.parents) for c in calls]
        self.done = 0
        self.decode_left = spec.decode_tokens  # of the calls not done yet
        self.started = False
        self.outcome = ProgramOutcome(spec.program_id, spec.kind, spec.arrival)


class Simulation:
    """One run: a list of programs (with arrival times) on a cluster of engines under one policy."""

    def __init__(
        self,
        programs: Sequence[ProgramSpec],
        profile: EngineProfile,
        scheduler: SchedulerConfig,
        config: SimConfig | None = None,
    ) -> None:
        self.config = config or SimConfig()
        self.profile = profile
        scheduler = scheduler.on_device(profile.device)
        if self.config.oracle != "none":
            scheduler = msgspec.structs.replace(scheduler, honor_request_priority=True)
        self.scheduler_config = scheduler
        self._kind_sizes = (
            _mean_decode_tokens_by_kind(programs) if self.config.oracle == "kind" else {}
        )
        self.programs = programs
        self.table = ProcessTable(
            ttl=scheduler.program_ttl_s,
            max_programs=scheduler.max_programs,
            max_call_records=scheduler.max_call_records,
        )
        engine_ids = [f"engine-{i}" for i in range(self.config.engines)]
        self.balancer = Balancer(
            BalancerConfig(
                policy=self.config.balancer, locality_threshold=self.config.locality_threshold
            ),
            engine_ids,
            self.table,
        )
        mode = self.config.preemption_for(scheduler.policy)
        key_tokens = longest_segments(programs)
        self.engines = {
            eid: SimEngine(
                eid,
                profile,
                make_scheduler(scheduler, self.table),
                mode,
                self.config.steps_per_schedule,
                charge_wall_time=self.config.service_accounting == "step",
                key_tokens=key_tokens,
                retention=self.config.retention_config(),
            )
            for eid in engine_ids
        }
        self._events: list[tuple[float, int, int, object]] = []
        self._seq = 0
        self._outcomes: list[ProgramOutcome] = []

    def _push(self, at: float, kind: int, payload: object) -> None:
        self._seq += 1
        heapq.heappush(self._events, (at, kind, self._seq, payload))

    def run(self) -> RunResult:
        wall = time.perf_counter()
        for spec in self.programs:
            run = _ProgramRun(spec)
            for call in spec.calls:
                if not call.parents:
                    self._push(spec.arrival + call.delay, _READY, (run, call.index))
        events = self._events
        on_finish = self._on_finish
        while events:
            now, kind, _, payload = heapq.heappop(events)
            if kind == _FINISH:
                self._finish(payload, now)  # type: ignore[arg-type]
            elif kind == _READY:
                run, index = cast(tuple[_ProgramRun, int], payload)
                self._ready(run, index, now)
            else:
                engine: SimEngine = payload  # type: ignore[assignment]
                end = engine.run_window(now, on_finish)
                engine.busy_until = end
                if end is not None:
                    self._push(end, _ENGINE, engine)
        stuck = sum(len(e.live) for e in self.engines.values())
        if stuck:
            raise RuntimeError(
                f"simulation ended with {stuck} calls unfinished (a call never fits an engine)"
            )
        return summarize(
            self._outcomes,
            list(self.engines.values()),
            self.profile,
            self.scheduler_config.policy,
            time.perf_counter() - wall,
        )

    def _ready(self, run: _ProgramRun, index: int, now: float) -> None:
        spec = run.spec.calls[index]
        program_id = run.spec.program_id
        if not run.started:
            run.started = True
            self.table.start(program_id, now)
        engine_id = self.balancer.route(program_id, spec.prompt_tokens, now)
        engine = self.engines[engine_id]
        call = Call(
            f"{program_id}/{index}",
            program_id,
            arrival=now,
            prompt_tokens=spec.prompt_tokens,
            thread_id=str(spec.thread),
        )
        oracle = self.config.oracle
        if oracle == "remaining":
            call.priority = run.decode_left
        elif oracle == "kind":
            call.priority = self._kind_sizes[run.spec.kind]
        live = LiveCall(spec, call, run, engine, now)
        engine.add(live, now)
        if engine.busy_until is None:
            engine.busy_until = now
            self._push(now, _ENGINE, engine)

    def _on_finish(self, live: LiveCall, at: float) -> None:
        self._push(at, _FINISH, live)

    def _finish(self, live: LiveCall, now: float) -> None:
        engine = live.engine
        engine.complete(live, now)
        self.balancer.release(engine.engine_id)
        run: _ProgramRun = live.program  # type: ignore[assignment]
        outcome = run.outcome
        outcome.add_call(live, now)
        run.done += 1
        run.decode_left -= live.spec.decode_tokens
        for child in run.children[live.spec.index]:
            run.pending[child] -= 1
            if not run.pending[child]:
                spec = run.spec.calls[child]
                self._push(now + spec.delay, _READY, (run, child))
        if run.done == len(run.spec.calls):
            outcome.finish(now, self.profile, run.spec)
            self._outcomes.append(outcome)
            for each in self.engines.values():
                each.program_ended(run.spec.program_id)
            self.table.end(run.spec.program_id, now)


def _mean_decode_tokens_by_kind(programs: Sequence[ProgramSpec]) -> dict[str, int]:
    """Each program kind's mean decode tokens per program (the ``kind`` oracle's rank)."""
    totals: dict[str, list[int]] = {}
    for program in programs:
        total = totals.setdefault(program.kind, [0, 0])
        total[0] += program.decode_tokens
        total[1] += 1
    return {kind: round(tokens / count) for kind, (tokens, count) in totals.items()}


def longest_segments(programs: Sequence[ProgramSpec]) -> dict[str, int]:
    """Each segment key's largest length over all the programs' calls (a key may grow: a
    tree node's key is longer in its children's prompts, where the observation follows it)."""
    longest: dict[str, int] = {}
    get = longest.get
    for program in programs:
        for call in program.calls:
            for key, n in call.segments:
                if n > get(key, 0):
                    longest[key] = n
    return longest


def simulate(
    programs: Sequence[ProgramSpec],
    profile: EngineProfile,
    scheduler: SchedulerConfig,
    config: SimConfig | None = None,
) -> RunResult:
    """Run ``programs`` (with their arrival times) to completion and summarize."""
    return Simulation(programs, profile, scheduler, config).run()
