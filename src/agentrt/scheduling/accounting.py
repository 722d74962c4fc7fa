"""Program accounting: the one place where a call's life is written into its program's entry.

Every driver that keeps a :class:`~agentrt.scheduling.process_table.ProcessTable`
(the engine's scheduler, the simulator's through its schedulers, the router,
the server's program directory) admits each call with :meth:`ProgramAccounting.admit`
and retires it with :meth:`ProgramAccounting.retire`, giving its wait, service
and :class:`CallOutcome`. With a policy, an admitted call takes its program's
priority (the start value and the queue level it falls in) and a retired one
updates it by the policy's completion rule (PLAS sum, ATLAS critical path);
without one, only the records and totals are kept.
"""

from __future__ import annotations

from collections.abc import Sequence

from agentrt.scheduling.call import Call
from agentrt.scheduling.policies import Policy
from agentrt.scheduling.process_table import CallOutcome, CallRecord, ProcessTable, ProgramEntry


class ProgramAccounting:
    """Admits calls into their programs' entries and retires them (one table, one policy)."""

    def __init__(
        self, table: ProcessTable, policy: Policy | None = None, boundaries: Sequence[float] = ()
    ) -> None:
        self.table = table
        self.policy = policy
        self.boundaries = list(boundaries)

    def admit(self, call: Call, now: float) -> tuple[ProgramEntry, CallRecord]:
        """The call arrived: its program's entry (created if absent) and the call's live record.

        With a policy, the call's ``start_value`` and ``level`` are set from
        the program's service.
        """
        entry, record = self.table.call_started(call.program_id, call.call_id, call.thread_id, now)
        policy = self.policy
        if policy is not None:
            call.start_value = policy.start_value(entry.service)
            call.level = record.level = policy.entry_level(call.start_value, self.boundaries)
        return entry, record

    def retire(
        self, call: Call, now: float, *, wait: float, outcome: CallOutcome
    ) -> ProgramEntry | None:
        """The call left with ``wait`` and ``call.service``: close its record with them and ``outcome``.

        Its wait and service add to the program's totals, its level is
        recorded, and with a policy the program's priority is updated.
        Returns the program's entry, None if it is gone.
        """
        entry = self.table.get(call.program_id)
        if entry is None:
            return None
        record = entry.live.get(call.call_id)
        if record is not None:
            record.wait, record.service, record.level = wait, call.service, call.level
        if self.policy is not None:
            entry.service = self.policy.updated_service(entry.service, call)
        self.table.call_ended(call.program_id, call.call_id, now, outcome)
        return entry

    def credit(self, program_id: str, service: float, now: float) -> ProgramEntry:
        """The program received ``service`` elsewhere (on other engines, as a router reports):
        its priority counts at least that much."""
        entry = self.table.start(program_id, now)
        entry.service = max(entry.service, service)
        return entry
