"""A worked example in the spirit of the paper's Fig. 2: batch size 2, four programs.

Programs A and B make three calls of 2 tokens each; C and D make two calls of
1 token each; all four start at step 0 (call order A, B, C, D) and each call
follows the previous one of its program without a tool pause. One token per
call per step.

FCFS (by hand): steps 0-1 run A1 B1; 2 runs C1 D1 (waited 2 each); 3-4 run
A2 B2 (waited 1 each); 5 runs C2 D2 (waited 2 each); 6-7 run A3 B3 (waited 1
each). Total wait 12; C and D finish after 6 steps, A and B after 8.

PLAS (levels [0,1) [1,2) [2,4) [4,8) ...; quanta too large to demote): steps
0-1 run A1 B1; A2 B2 arrive with priority 2 (level 2); 2 runs C1 D1 (waited 2
each); C2 D2 arrive with priority 1 (level 1) and run at step 3 ahead of A2
B2; 4-5 run A2 B2 (waited 2 each); 6-7 run A3 B3. Total wait 8; C and D
finish after 4 steps, A and B still after 8: the short programs are no longer
stuck behind the long ones, and the long ones lose nothing.
"""

from __future__ import annotations

import pytest
from tests.unit.scheduling.harness import ProgramSpec, run_programs

from agentrt.scheduling import SchedulerConfig

PROGRAMS = [
    ProgramSpec("A", [[2], [2], [2]]),
    ProgramSpec("B", [[2], [2], [2]]),
    ProgramSpec("C", [[1], [1]]),
    ProgramSpec("D", [[1], [1]]),
]


def config(policy: str) -> SchedulerConfig:
    return SchedulerConfig(
        policy=policy,  # type: ignore[arg-type]
        service_unit="tokens",
        num_queues=4,
        first_boundary=1,
        first_quantum=100,
        beta=float("inf"),
    )


def test_fcfs_makes_short_programs_wait_behind_long_ones() -> None:
    trace = run_programs(config("fcfs"), PROGRAMS, batch_size=2)
    assert trace.total_wait == 12
    assert [trace.latency(p) for p in PROGRAMS] == [8, 8, 6, 6]
    assert trace.steps[3].batch == ["A.1.0", "B.1.0"]


@pytest.mark.parametrize("policy", ["plas", "atlas"])
def test_plas_runs_the_short_programs_first(policy: str) -> None:
    trace = run_programs(config(policy), PROGRAMS, batch_size=2)
    assert trace.total_wait == 8
    assert [trace.latency(p) for p in PROGRAMS] == [8, 8, 4, 4]
    assert trace.steps[3].batch == ["C.1.0", "D.1.0"]
    assert trace.service == {"A": 6, "B": 6, "C": 2, "D": 2}
