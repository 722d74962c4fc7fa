"""One live LLM call as the scheduler sees it.

The driver (engine, simulator) creates a :class:`Call` with what it knows at
arrival and hands it to :meth:`Scheduler.add`; everything below the
"scheduler-owned" line is maintained by the scheduler and read-only for
drivers. Waiting time is kept lazily (accumulated part plus the clock value
when the current wait began) so that a decision never touches calls whose
state did not change.
"""

from __future__ import annotations


class Call:
    """A call: identity and arrival facts, then scheduler-owned state."""

    __slots__ = (
        "_key",
        "_starve_version",
        "_wait_acc",
        "_wait_c_acc",
        "_waiting_since",
        "arrival",
        "call_id",
        "level",
        "priority",
        "program_id",
        "promoted",
        "prompt_tokens",
        "quantum",
        "running",
        "seq",
        "service",
        "service_c",
        "start_value",
        "thread_id",
    )

    def __init__(
        self,
        call_id: str,
        program_id: str,
        *,
        arrival: float = 0.0,
        prompt_tokens: int = 0,
        thread_id: str = "",
        priority: int | None = None,
    ) -> None:
        if prompt_tokens < 0:
            raise ValueError("prompt_tokens must be >= 0")
        self.call_id = call_id
        self.program_id = program_id
        self.thread_id = thread_id
        self.arrival = arrival
        self.prompt_tokens = prompt_tokens
        # Explicit request priority (vLLM's field: lower runs sooner).
        self.priority = priority
        # --- scheduler-owned ---
        self.seq = -1  # arrival order in this scheduler; FCFS tie-break, kept across preemption
        self.level = 0  # queue level (0 = top)
        self.promoted = False  # by anti-starvation: stays in the top level until it ends
        self.quantum = 0.0  # service left in this level before demotion
        self.start_value = 0.0  # program priority snapshot at arrival (PLAS/ATLAS)
        self.service = 0.0  # model service this call received (unit of the config)
        self.service_c = 0.0  # T_c: service since arrival or last promotion
        self.running = False  # in the last decision's batch
        self._wait_acc = 0.0  # total wait, closed intervals
        self._wait_c_acc = 0.0  # W_c: wait since arrival or last promotion, closed intervals
        self._waiting_since: float | None = None  # clock when the open wait began
        # Position in the run order: (request priority, rank, program arrival, seq).
        self._key: tuple[float, float, float, int] = (0.0, 0.0, 0.0, -1)
        self._starve_version = 0

    def wait(self, clock: float) -> float:
        """Total waiting time up to ``clock`` (scheduler clock: seconds, or steps in token mode)."""
        return self._wait_acc + self._open_wait(clock)

    def wait_c(self, clock: float) -> float:
        """W_c: waiting since arrival or the last anti-starvation promotion."""
        return self._wait_c_acc + self._open_wait(clock)

    def _open_wait(self, clock: float) -> float:
        since = self._waiting_since
        return 0.0 if since is None else max(0.0, clock - since)

    def _start_waiting(self, clock: float) -> None:
        if self._waiting_since is None:
            self._waiting_since = clock

    def _stop_waiting(self, clock: float) -> None:
        open_wait = self._open_wait(clock)
        self._wait_acc += open_wait
        self._wait_c_acc += open_wait
        self._waiting_since = None

    def __repr__(self) -> str:
        return (
            f"Call({self.call_id!r}, program={self.program_id!r}, level={self.level}, "
            f"start={self.start_value:g}, service={self.service:g}, running={self.running})"
        )
