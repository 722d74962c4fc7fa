"""A tiny deterministic engine for the scheduling tests: programs of calls, one token per step.

Each program is a list of stages; a stage is a list of calls that run in
parallel (their output lengths in tokens); the next stage starts when the
whole stage has completed (fan-out / join, the shape of tree search). A
sequential program has one call per stage. Each step the scheduler forms the
batch under an admission, every call in the batch receives one token of
service (token mode), calls that reach their length finish, and the next
stage of their program arrives before the following step.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tests.unit.scheduling.admissions import SlotAdmission

from agentrt.scheduling import Call, Scheduler, SchedulerConfig, make_scheduler


@dataclass(frozen=True)
class ProgramSpec:
    name: str
    stages: list[list[int]]
    arrival: int = 0


@dataclass
class StepRecord:
    batch: list[str]
    preempted: list[str]
    promoted: list[str]


@dataclass
class Trace:
    steps: list[StepRecord] = field(default_factory=list)
    waits: dict[str, float] = field(default_factory=dict)  # call id -> steps waited
    finished: dict[str, int] = field(default_factory=dict)  # program -> last step it ran
    service: dict[str, float] = field(default_factory=dict)  # program -> final service scalar

    def latency(self, spec: ProgramSpec) -> int:
        return self.finished[spec.name] + 1 - spec.arrival

    @property
    def total_wait(self) -> float:
        return sum(self.waits.values())


def run_programs(
    config: SchedulerConfig,
    programs: list[ProgramSpec],
    batch_size: int,
    *,
    max_steps: int = 10_000,
    check: Callable[[Scheduler, float], None] | None = None,
    step_seconds: float = 1.0,
) -> Trace:
    """Run ``programs`` to completion; ``check(scheduler, now)`` runs after every decision.

    Step ``t`` runs from ``t * step_seconds`` to ``(t + 1) * step_seconds``; in
    time mode each call in the batch is charged the step's duration.
    """
    sched = make_scheduler(config)
    trace = Trace()
    remaining: dict[str, int] = {}
    stage_of: dict[str, int] = {}
    open_calls: dict[str, set[str]] = {}
    by_name = {p.name: p for p in programs}
    done: set[str] = set()

    def start_stage(spec: ProgramSpec, stage: int, now: float) -> None:
        stage_of[spec.name] = stage
        open_calls[spec.name] = set()
        for i, length in enumerate(spec.stages[stage]):
            call_id = f"{spec.name}.{stage}.{i}"
            remaining[call_id] = length
            open_calls[spec.name].add(call_id)
            sched.add(Call(call_id, spec.name, arrival=now, thread_id=str(i)), now)

    service = 1.0 if config.service_unit == "tokens" else step_seconds
    step = 0
    while len(done) < len(programs):
        assert step < max_steps, "programs did not finish"
        now, end = step * step_seconds, (step + 1) * step_seconds
        for spec in programs:
            if spec.arrival == step:
                sched.table.start(spec.name, now)
                start_stage(spec, 0, now)
        decision = sched.schedule(now, SlotAdmission(batch_size))
        if check is not None:
            check(sched, now)
        trace.steps.append(
            StepRecord(
                [c.call_id for c in decision.batch],
                [c.call_id for c in decision.preempted],
                [c.call_id for c in decision.promoted],
            )
        )
        for call in decision.batch:
            sched.charge(call, service, end)
        for call in decision.batch:
            remaining[call.call_id] -= 1
            if remaining[call.call_id]:
                continue
            finished = sched.finish(call.call_id, end)
            assert finished is call
            trace.waits[call.call_id] = call.wait(sched.clock(end))
            program = call.program_id
            open_calls[program].discard(call.call_id)
            if not open_calls[program]:
                spec = by_name[program]
                if stage_of[program] + 1 < len(spec.stages):
                    start_stage(spec, stage_of[program] + 1, end)
                else:
                    entry = sched.table.get(program)
                    assert entry is not None
                    trace.service[program] = entry.service
                    trace.finished[program] = step
                    done.add(program)
                    sched.table.end(program, end)
        step += 1
    return trace


def scheduler_for(policy: str, **overrides: object) -> Scheduler:
    """A token-mode scheduler for ``policy`` with the given config overrides."""
    return make_scheduler(SchedulerConfig(policy=policy, service_unit="tokens", **overrides))  # type: ignore[arg-type]
