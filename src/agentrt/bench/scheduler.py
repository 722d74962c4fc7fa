"""``agentrt bench scheduler``: what one scheduling decision costs, per policy.

A steady-state engine without a model: ``--programs`` live programs hold
``--running`` running calls and ``--waiting`` waiting calls. Each step the
scheduler forms the batch under a resource model (batch slots and a KV
budget, judged on the admitted calls' contexts like the engine does), every
call in the batch is charged one decode step, calls that reach their output
length finish and a new call of a random program replaces each, so the
population stays constant. Only :meth:`Scheduler.schedule` is timed for the
decision figures; the step's bookkeeping (charge, finish, add) is reported
separately. Seeded, so two runs see the same calls in the same order.

Decision cost is CPU time of this thread (``time.thread_time_ns``): on a
shared machine the wall clock also counts the time the OS gave the core to
someone else, which says nothing about the scheduler. The wall-clock p50 and
p99 are reported next to it.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

from agentrt.scheduling import POLICIES, Call, Scheduler, SchedulerConfig, make_scheduler

STEP_SECONDS = 0.025  # model time charged per decode step in time mode (an 8B model on one A100)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--policies", default=",".join(POLICIES), help="comma-separated policies")
    parser.add_argument("--programs", type=int, default=1000, help="live programs")
    parser.add_argument("--running", type=int, default=256, help="batch slots (running calls)")
    parser.add_argument("--waiting", type=int, default=3000, help="waiting calls")
    parser.add_argument("--steps", type=int, default=2000, help="timed decisions per policy")
    parser.add_argument("--warmup", type=int, default=200, help="untimed steps before timing")
    parser.add_argument("--unit", choices=("time", "tokens"), default="time", help="service unit")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--json", type=Path, default=None, help="write the results here")


class _Admission:
    """Batch slots plus a KV budget in tokens, judged on admitted calls only."""

    __slots__ = ("context", "free", "slots")

    def __init__(self, slots: int, kv_tokens: int, context: dict[str, int]) -> None:
        self.slots = slots
        self.free = kv_tokens
        self.context = context

    def admit(self, call: Call) -> bool:
        need = self.context[call.call_id]
        if self.slots == 0 or need > self.free:
            return False
        self.slots -= 1
        self.free -= need
        return True


class _Workload:
    """Seeded calls: prompt 64..1024 tokens, output 16..512 tokens."""

    def __init__(self, programs: int, seed: int) -> None:
        self.rng = random.Random(seed)
        self.programs = programs
        self.next_id = 0
        self.context: dict[str, int] = {}
        self.left: dict[str, int] = {}

    def new_call(self, now: float) -> Call:
        call_id = f"c{self.next_id}"
        self.next_id += 1
        prompt = self.rng.randint(64, 1024)
        self.context[call_id] = prompt
        self.left[call_id] = self.rng.randint(16, 512)
        program = f"p{self.rng.randrange(self.programs)}"
        return Call(call_id, program, arrival=now, prompt_tokens=prompt)


def _bench_policy(policy: str, args: argparse.Namespace) -> dict[str, Any]:
    config = SchedulerConfig(policy=policy, service_unit=args.unit)  # type: ignore[arg-type]
    sched: Scheduler = make_scheduler(config)
    work = _Workload(args.programs, args.seed)
    now = 0.0
    for _ in range(args.running + args.waiting):
        sched.add(work.new_call(now), now)
    # KV budget: room for the batch at the mean context (576 prompt + ~264 output tokens).
    kv_tokens = args.running * 840
    decisions_ns: list[int] = []
    decisions_wall_ns: list[int] = []
    bookkeeping_ns: list[int] = []
    batch_sizes: list[int] = []
    preempted = promoted = 0
    for step in range(args.warmup + args.steps):
        admission = _Admission(args.running, kv_tokens, work.context)
        w0, t0 = time.perf_counter_ns(), time.thread_time_ns()
        decision = sched.schedule(now, admission)
        t1, w1 = time.thread_time_ns(), time.perf_counter_ns()
        now += STEP_SECONDS
        service = STEP_SECONDS if args.unit == "time" else 1.0
        for call in decision.batch:
            sched.charge(call, service, now)
            work.context[call.call_id] += 1
            work.left[call.call_id] -= 1
            if work.left[call.call_id] == 0:
                sched.finish(call.call_id, now)
                del work.context[call.call_id], work.left[call.call_id]
                sched.add(work.new_call(now), now)
        t2 = time.thread_time_ns()
        if step >= args.warmup:
            decisions_ns.append(t1 - t0)
            decisions_wall_ns.append(w1 - w0)
            bookkeeping_ns.append(t2 - t1)
            batch_sizes.append(len(decision.batch))
            preempted += len(decision.preempted)
            promoted += len(decision.promoted)
    decisions_ns.sort()
    decisions_wall_ns.sort()
    return {
        "policy": policy,
        "decision_us_p50": _percentile(decisions_ns, 0.50) / 1e3,
        "decision_us_p99": _percentile(decisions_ns, 0.99) / 1e3,
        "decision_us_mean": statistics.fmean(decisions_ns) / 1e3,
        "decision_wall_us_p50": _percentile(decisions_wall_ns, 0.50) / 1e3,
        "decision_wall_us_p99": _percentile(decisions_wall_ns, 0.99) / 1e3,
        "bookkeeping_us_mean": statistics.fmean(bookkeeping_ns) / 1e3,
        "batch_mean": statistics.fmean(batch_sizes),
        "preempted_per_step": preempted / args.steps,
        "promoted_per_step": promoted / args.steps,
        "live_calls": len(sched),
        "programs": len(sched.table),
    }


def _percentile(sorted_values: list[int], q: float) -> float:
    index = min(len(sorted_values) - 1, round(q * (len(sorted_values) - 1)))
    return float(sorted_values[index])


def _table(rows: list[dict[str, Any]]) -> str:
    columns = [
        ("policy", "policy", "{}"),
        ("decision_us_p50", "cpu p50 us", "{:.0f}"),
        ("decision_us_p99", "cpu p99 us", "{:.0f}"),
        ("decision_us_mean", "cpu mean us", "{:.0f}"),
        ("decision_wall_us_p50", "wall p50 us", "{:.0f}"),
        ("decision_wall_us_p99", "wall p99 us", "{:.0f}"),
        ("bookkeeping_us_mean", "charge+finish cpu us", "{:.0f}"),
        ("batch_mean", "batch", "{:.1f}"),
        ("preempted_per_step", "preempt/step", "{:.2f}"),
        ("promoted_per_step", "promote/step", "{:.2f}"),
    ]
    cells = [[title for _, title, _ in columns]]
    cells += [[fmt.format(row[key]) for key, _, fmt in columns] for row in rows]
    widths = [max(len(line[i]) for line in cells) for i in range(len(columns))]
    lines = [
        "  ".join(cell.rjust(width) for cell, width in zip(line, widths, strict=True))
        for line in cells
    ]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    policies = [p.strip() for p in args.policies.split(",") if p.strip()]
    unknown = [p for p in policies if p not in POLICIES]
    if unknown or not policies:
        raise SystemExit(f"unknown policies {unknown}; choose from {', '.join(POLICIES)}")
    if min(args.programs, args.running, args.steps) < 1 or min(args.waiting, args.warmup) < 0:
        raise SystemExit("--programs, --running and --steps must be >= 1; --waiting, --warmup >= 0")
    rows = [_bench_policy(policy, args) for policy in policies]
    header = (
        f"scheduler decision cost: {args.programs} programs, {args.running} batch slots, "
        f"{args.waiting} waiting calls, unit={args.unit}, {args.steps} decisions per policy"
    )
    print(header)
    print(_table(rows))
    if args.json is not None:
        setup = {
            k: v
            for k, v in vars(args).items()
            if k in {"programs", "running", "waiting", "steps", "warmup", "unit", "seed"}
        }
        args.json.write_text(
            json.dumps({"benchmark": "scheduler", "setup": setup, "results": rows}, indent=2)
        )
    return 0
