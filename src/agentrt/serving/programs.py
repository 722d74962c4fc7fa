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
from dataclasses import dataclass, field

from agentrt.protocol.engine import GenerationRequest, Timings
from agentrt.protocol.programs import (
    MAX_METADATA_ENTRIES,
    ProgramCall,
    ProgramInfo,
    ProgramStart,
)
from agentrt.scheduling.process_table import ProcessTable, ProgramEntry
from agentrt.serving.auth import scoped_id, unscoped_id
from agentrt.serving.metrics import ServerMetrics


@dataclass
class _Meta:
    name: str | None
    created: float  # unix time
    calls: int = 0
    metadata: dict[str, str] = field(default_factory=dict)


class ProgramDirectory:
    def __init__(
        self,
        metrics: ServerMetrics | None = None,
        *,
        ttl: float = 600.0,
        max_programs: int = 100_000,
    ) -> None:
        self.table = ProcessTable(ttl=ttl, max_programs=max_programs, max_call_records=64)
        self.metrics = metrics
        self._meta: dict[str, _Meta] = {}

    def __len__(self) -> int:
        return len(self.table)

    # ------------------------------------------------------------------ lifecycle (tenant view)

    def start(self, tenant: str, body: ProgramStart) -> ProgramInfo:
        """Create or update a program; ``ValueError`` (and no change) if its metadata would
        grow past :data:`MAX_METADATA_ENTRIES` over repeated starts."""
        scoped = scoped_id(tenant, body.program_id)
        known = self._meta.get(scoped)
        merged = {**(known.metadata if known else {}), **body.metadata}
        if len(merged) > MAX_METADATA_ENTRIES:
            raise ValueError(f"a program keeps at most {MAX_METADATA_ENTRIES} metadata entries")
        self.table.start(scoped, time.monotonic())
        meta = self._meta_of(scoped)
        if body.name:
            meta.name = body.name
        meta.metadata = merged
        self._prune()
        return self._info(tenant, scoped)

    def end(self, tenant: str, program_id: str) -> ProgramInfo | None:
        scoped = scoped_id(tenant, program_id)
        entry = self.table.get(scoped)
        if entry is None:
            return None
        info = self._info(tenant, scoped, state="ended")
        self.table.end(scoped, time.monotonic())
        meta = self._meta.pop(scoped, None)
        if self.metrics is not None and meta is not None:
            self.metrics.observe_program(
                max(0.0, time.time() - meta.created), entry.total_service, entry.wait, meta.calls
            )
        return info

    def get(self, tenant: str, program_id: str) -> ProgramInfo | None:
        scoped = scoped_id(tenant, program_id)
        self.table.expire(time.monotonic())
        if scoped not in self.table:
            return None
        return self._info(tenant, scoped, with_calls=True)

    def list(self, tenant: str) -> list[ProgramInfo]:
        self.table.expire(time.monotonic())
        prefix = scoped_id(tenant, "")
        return [
            self._info(tenant, e.program_id)
            for e in self.table.programs()
            if e.program_id.startswith(prefix)
        ]

    # ------------------------------------------------------------------ calls (scoped ids, from the app)

    def call_started(self, request: GenerationRequest, interrupt_seconds: float = 0.0) -> None:
        if request.program is None:
            return
        scoped = request.program.program_id
        now = time.monotonic()
        if interrupt_seconds > 0 and request.program.parent_call_id is not None:
            self.table.record_interrupt(
                scoped, interrupt_seconds, now, call_id=request.program.parent_call_id
            )
        self.table.call_started(scoped, request.call_id, request.program.thread_id, now)
        self._meta_of(scoped).calls += 1
        self._prune()

    def call_ended(self, request: GenerationRequest, timings: Timings | None, outcome: str) -> None:
        if request.program is None:
            return
        entry = self.table.get(request.program.program_id)
        if entry is None:
            return
        record = entry.live.get(request.call_id)
        if record is None:
            return
        if timings is not None:
            record.wait = timings.queue_time
            record.service = timings.model_time
        self.table.call_ended(
            request.program.program_id, request.call_id, time.monotonic(), outcome
        )

    # ------------------------------------------------------------------ internals

    def _meta_of(self, scoped: str) -> _Meta:
        meta = self._meta.get(scoped)
        if meta is None:
            meta = self._meta[scoped] = _Meta(name=None, created=time.time())
        return meta

    def _prune(self) -> None:
        # The table evicts and expires on its own; drop the metadata of programs it no longer holds.
        if len(self._meta) > 2 * len(self.table) + 64:
            for scoped in [s for s in self._meta if s not in self.table]:
                del self._meta[scoped]

    def _info(
        self, tenant: str, scoped: str, *, state: str = "running", with_calls: bool = False
    ) -> ProgramInfo:
        entry = self.table.get(scoped)
        meta = self._meta_of(scoped)
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
            state=r.outcome,
            service=r.service,
            wait_seconds=r.wait,
            interrupt_seconds=r.interrupt_time,
        )
        for r in entry.records()
    ]
