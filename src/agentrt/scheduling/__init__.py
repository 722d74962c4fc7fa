"""Program-aware scheduling (Autellix): one implementation for the engine, the router and the simulator.

Pure Python, no I/O, deterministic. Public API:

- :class:`SchedulerConfig` (policy ``fcfs | las | mlfq | plas | atlas | gittins``,
  ``service_unit`` ``auto | time | tokens``, K queues, boundaries, quanta, beta,
  program TTL, max programs) and :class:`BalancerConfig`;
- :class:`Call`: one live LLM call (``call_id``, ``program_id``,
  ``thread_id``, ``arrival``, ``prompt_tokens``, explicit ``priority``; then
  scheduler-owned ``level``, ``quantum``, ``start_value``, ``service``,
  ``seq``, ``running``, ``wait(clock)``);
- :class:`Scheduler` / :func:`make_scheduler`, :class:`Decision`, and the
  :class:`Admission` protocol the driver implements (its resource model);
  ``Scheduler.counters`` (:class:`SchedulerCounters`) and
  ``Scheduler.calls_per_level()`` for metrics;
- :class:`ProcessTable`, :class:`ProgramEntry`, :class:`CallRecord`: what is
  known about each program (service, wait, engine affinity, call records);
- :class:`ProgramAccounting`: the one writer of a call's life into its
  program's entry (``admit`` a call; ``retire`` it with its wait, service and
  :class:`CallOutcome`), used by the scheduler, the router and the server's
  program directory;
- :class:`Balancer` (``round_robin | least_used | locality``; it pins
  programs to engines) and :class:`NoEngineAvailable`;
- :class:`RetentionPolicy` / :class:`RetentionConfig` (:mod:`agentrt.scheduling.retention`):
  which cached KV a pool keeps across a program's tool calls (TTL pins learned
  from interrupt durations, eviction by expected reuse), for engine and simulator;
- the policies themselves (:mod:`agentrt.scheduling.policies`), the two
  completion rules :func:`plas_service` / :func:`atlas_service`, and
  :func:`queue_level` (program priority -> queue level, e.g. to map onto a
  remote engine's integer ``priority``).

How a driver (engine step loop, simulator) uses it::

    sched = make_scheduler(SchedulerConfig(policy="atlas"))
    sched.add(Call("c1", "prog-7", arrival=now, prompt_tokens=412), now)
    while True:                                 # one engine step
        decision = sched.schedule(now, admission)   # admission.admit(call) -> bool, in order
        swap_out(decision.preempted)             # were running, lost their place
        run(decision.batch)
        for call in decision.batch:
            sched.charge(call, model_seconds_or_tokens, now)   # same ``now`` for the step
        for call_id in completed:
            sched.finish(call_id, now)           # PLAS/ATLAS program update
        # cancelled: sched.abort(call_id, now)

For multi-step scheduling call ``schedule`` every N steps and ``charge``
every step (or once per window with ``step=`` the engine's step counter, so
that token-mode waits still count every step). A router owns one :class:`ProcessTable` and may share it with
its schedulers and its :class:`Balancer`. None of these objects lock: each
belongs to one thread (the engine's step loop, the router's event loop).
The cost of a decision is measured by ``agentrt bench scheduler``.
"""

from agentrt.scheduling.accounting import ProgramAccounting
from agentrt.scheduling.balancer import Balancer, NoEngineAvailable
from agentrt.scheduling.call import Call
from agentrt.scheduling.config import (
    POLICIES,
    BalancerConfig,
    BalancerPolicy,
    PolicyName,
    SchedulerConfig,
    ServiceUnit,
)
from agentrt.scheduling.policies import (
    Policy,
    atlas_service,
    make_policy,
    plas_service,
    queue_level,
)
from agentrt.scheduling.process_table import CallOutcome, CallRecord, ProcessTable, ProgramEntry
from agentrt.scheduling.retention import (
    RETENTION_MODES,
    Hold,
    InterruptPredictor,
    Pressure,
    RetentionConfig,
    RetentionCounters,
    RetentionMode,
    RetentionPolicy,
    choose_ttl,
    policy_priority,
)
from agentrt.scheduling.scheduler import (
    Admission,
    Decision,
    Scheduler,
    SchedulerCounters,
    make_scheduler,
)

__all__ = [
    "POLICIES",
    "RETENTION_MODES",
    "Admission",
    "Balancer",
    "BalancerConfig",
    "BalancerPolicy",
    "Call",
    "CallOutcome",
    "CallRecord",
    "Decision",
    "Hold",
    "InterruptPredictor",
    "NoEngineAvailable",
    "Policy",
    "PolicyName",
    "Pressure",
    "ProcessTable",
    "ProgramAccounting",
    "ProgramEntry",
    "RetentionConfig",
    "RetentionCounters",
    "RetentionMode",
    "RetentionPolicy",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerCounters",
    "ServiceUnit",
    "atlas_service",
    "choose_ttl",
    "make_policy",
    "make_scheduler",
    "plas_service",
    "policy_priority",
    "queue_level",
]
