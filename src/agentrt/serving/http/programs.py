"""The server's view of agent programs, for ``/v1/programs`` and the program metrics.

Programs live in a :class:`agentrt.scheduling.ProcessTable` (the same
bounded, TTL-expiring table the scheduler uses), keyed by the tenant-scoped
id: a program appears when the SDK announces it or with its first call, its
calls' wait and model time (from the engine's timings) add up to the
program's wait and attained service, and it disappears when it ends or idles
past the TTL. The router and the engine keep their own tables for
scheduling; this one answers what a client may inspect.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

from agentrt.protocol.engine import GenerationRequest, Timings
from agentrt.protocol.programs import (
    MAX_METADATA_ENTRIES,
    ProgramCall,
    ProgramInfo,
    ProgramStart,
)
from agentrt.scheduling import Call, CallOutcome, ProcessTable, ProgramAccounting, ProgramEntry
from agentrt.serving.http.auth import scoped_id, unscoped_id
from agentrt.serving.http.metrics import ServerMetrics


@dataclass
class _Meta:
    name: str | None
    created: float  # unix time
    calls: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


class ProgramDirectory:
    """Each tenant's programs in a table of its own, so one tenant's flood evicts only its own.

    ``max_programs`` is the bound of one tenant's table (a number, or a
    function of the tenant).
    """

    def __init__(
        self,
        metrics: ServerMetrics | None = None,
        *,
        ttl: float = 600.0,
        max_programs: int | Callable[[str], int] = 100_000,
    ) -> None:
        self.ttl = ttl
        self.max_programs = max_programs
        self.metrics = metrics
        self._tables: dict[str, ProcessTable] = {}
        self._accounts: dict[str, ProgramAccounting] = {}
        self._metas: dict[str, dict[str, _Meta]] = {}

    def __len__(self) -> int:
        return sum(len(t) for t in self._tables.values())

    def table(self, tenant: str) -> ProcessTable:
        table = self._tables.get(tenant)
        if table is None:
            bound = self.max_programs
            limit = bound(tenant) if callable(bound) else bound
            table = ProcessTable(ttl=self.ttl, max_programs=limit, max_call_records=64)
            self._tables[tenant] = table
            self._accounts[tenant] = ProgramAccounting(table)
            self._metas[tenant] = {}
        return table

    # ------------------------------------------------------------------ lifecycle (tenant view)

    def start(self, tenant: str, body: ProgramStart) -> ProgramInfo:
        """Create or update a program; ``ValueError`` (and no change) if its metadata would
        grow past :data:`MAX_METADATA_ENTRIES` over repeated starts."""
        scoped = scoped_id(tenant, body.program_id)
        table = self.table(tenant)
        known = self._metas[tenant].get(scoped)
        merged = {**(known.metadata if known else {}), **body.metadata}
        if len(merged) > MAX_METADATA_ENTRIES:
            raise ValueError(f"a program keeps at most {MAX_METADATA_ENTRIES} metadata entries")
        table.start(scoped, time.monotonic())
        meta = self._meta_of(tenant, scoped)
        if body.name:
            meta.name = body.name
        meta.metadata = merged
        self._prune(tenant)
        return self._info(tenant, scoped)

    def end(self, tenant: str, program_id: str) -> ProgramInfo | None:
        scoped = scoped_id(tenant, program_id)
        table = self.table(tenant)
        entry = table.get(scoped)
        if entry is None:
            return None
        info = self._info(tenant, scoped, state="ended")
        table.end(scoped, time.monotonic())
        meta = self._metas[tenant].pop(scoped, None)
        if self.metrics is not None and meta is not None:
            self.metrics.observe_program(
                max(0.0, time.time() - meta.created), entry.total_service, entry.wait, meta.calls
            )
        return info

    def get(self, tenant: str, program_id: str) -> ProgramInfo | None:
        scoped = scoped_id(tenant, program_id)
        table = self.table(tenant)
        table.expire(time.monotonic())
        if scoped not in table:
            return None
        return self._info(tenant, scoped, with_calls=True)

    def list(self, tenant: str) -> list[ProgramInfo]:
        table = self.table(tenant)
        table.expire(time.monotonic())
        return [self._info(tenant, e.program_id) for e in table.programs()]

    # ------------------------------------------------------------------ calls (scoped ids, from the app)

    def call_started(self, request: GenerationRequest, interrupt_seconds: float = 0.0) -> None:
        if request.program is None:
            return
        tenant, scoped = request.program.tenant, request.program.program_id
        table = self.table(tenant)
        now = time.monotonic()
        if interrupt_seconds > 0 and request.program.parent_call_id is not None:
            table.record_interrupt(
                scoped, interrupt_seconds, now, call_id=request.program.parent_call_id
            )
        call = Call(request.call_id, scoped, thread_id=request.program.thread_id)
        self._accounts[tenant].admit(call, now)
        self._meta_of(tenant, scoped).calls += 1
        self._prune(tenant)

    def call_ended(
        self, request: GenerationRequest, timings: Timings | None, outcome: CallOutcome
    ) -> None:
        """Close the call's record with the engine's timings (its queue and model time)."""
        if request.program is None:
            return
        tenant = request.program.tenant
        self.table(tenant)
        call = Call(request.call_id, request.program.program_id)
        call.service = timings.model_time if timings is not None else 0.0
        wait = timings.queue_time if timings is not None else 0.0
        self._accounts[tenant].retire(call, time.monotonic(), wait=wait, outcome=outcome)

    # ------------------------------------------------------------------ internals

    def _meta_of(self, tenant: str, scoped: str) -> _Meta:
        metas = self._metas[tenant]
        meta = metas.get(scoped)
        if meta is None:
            meta = metas[scoped] = _Meta(name=None, created=time.time())
        return meta

    def _prune(self, tenant: str) -> None:
        # The table evicts and expires on its own; drop the metadata of programs it no longer holds.
        table, metas = self._tables[tenant], self._metas[tenant]
        if len(metas) > 2 * len(table) + 64:
            for scoped in [s for s in metas if s not in table]:
                del metas[scoped]

    def _info(
        self, tenant: str, scoped: str, *, state: str = "running", with_calls: bool = False
    ) -> ProgramInfo:
        entry = self.table(tenant).get(scoped)
        meta = self._meta_of(tenant, scoped)
        assert entry is not None
        return ProgramInfo(
            id=unscoped_id(tenant, scoped),
            name=meta.name,
            state="ended" if state == "ended" else "running",
            created=meta.created,
            num_calls=meta.calls,
            live_calls=len(entry.live),
            service=entry.total_service,
            wait_seconds=entry.wait,
            interrupt_seconds=entry.interrupt_time,
            metadata=dict(meta.metadata),
            calls=_calls(tenant, entry) if with_calls else [],
        )


def _calls(tenant: str, entry: ProgramEntry) -> list[ProgramCall]:
    return [
        ProgramCall(
            id=unscoped_id(tenant, r.call_id),
            thread_id=r.thread_id,
            state=r.outcome.value,
            service=r.service,
            wait_seconds=r.wait,
            interrupt_seconds=r.interrupt_time,
        )
        for r in entry.records()
    ]
