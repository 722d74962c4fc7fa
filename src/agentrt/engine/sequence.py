"""One generation stream (one choice of one call): its tokens, its KV blocks, its state.

A call with ``n`` choices becomes ``n`` sequences; each is its own call for
the scheduler. The KV of the first ``num_computed_tokens`` tokens lives in the
paged cache (or, while swapped, in the host pool); the remaining tokens are
fed to the model the next time the sequence is scheduled, which is how
chunked prefill, decode and recompute after preemption are one code path.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any

from agentrt.protocol.engine import FinishReason, SamplingParams, Timings


class SeqStatus(enum.Enum):
    WAITING = "waiting"  # holds no KV: new, or preempted by recompute
    RUNNING = "running"  # holds KV blocks in the paged cache
    SWAPPED = "swapped"  # its KV sits in the host swap pool
    FINISHED = "finished"


@dataclass(eq=False)
class Sequence:
    seq_id: str  # the scheduler's call id
    request_id: str  # the GenerationRequest's call id
    index: int  # choice index within the request
    token_ids: list[int]
    num_prompt_tokens: int
    sampling: SamplingParams
    max_tokens: int  # resolved: never past the context
    arrival: float
    call: Any  # the agentrt.scheduling Call that stands for this sequence
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of full blocks
    num_registered_blocks: int = 0  # leading blocks already offered to the prefix cache
    swap_handle: Any = None  # the host pool's range while SWAPPED
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    timings: Timings = field(default_factory=Timings)
    last_queued: float = 0.0  # when it last started waiting (for queue_time)
    admitted_before: bool = False

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - self.num_prompt_tokens

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[self.num_prompt_tokens :]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SeqStatus.FINISHED
