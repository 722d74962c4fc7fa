"""One generation stream (one choice of one call): its tokens, its KV blocks, its state.

A call with ``n`` choices becomes ``n`` sequences; each is its own call for
the scheduler. The KV of the first ``num_computed_tokens`` tokens lives in the
paged cache (or, while swapped, in the host pool); the remaining tokens are
fed to the model the next time the sequence is scheduled, which is how
chunked prefill, decode and recompute after preemption are one code path.
Each sequence owns the state of its output side: its sampling state (the
tokens the sampler has seen, its private generator) and its detokenizer.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from agentrt.protocol.engine import FinishReason, SamplingParams, Timings
from agentrt.scheduling.call import Call

if TYPE_CHECKING:
    from agentrt.engine.detokenizer import IncrementalDetokenizer
    from agentrt.engine.kv_cache import HostRange
    from agentrt.engine.sampling import SamplingState


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
    state: SamplingState  # its parameters, generator and the tokens the sampler has seen
    max_tokens: int  # resolved: never past the context
    arrival: float
    call: Call  # what the scheduler orders this sequence by
    detokenizer: IncrementalDetokenizer | None = None  # None when the engine has no tokenizer
    status: SeqStatus = SeqStatus.WAITING
    num_computed_tokens: int = 0
    num_cached_tokens: int = 0  # prompt tokens served by the prefix cache (first admission)
    block_table: list[int] = field(default_factory=list)
    block_hashes: list[int] = field(default_factory=list)  # chained hashes of full blocks
    num_registered_blocks: int = 0  # leading blocks already offered to the prefix cache
    swap_handle: HostRange | None = None  # the host pool's range while SWAPPED
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None
    timings: Timings = field(default_factory=Timings)
    last_queued: float = 0.0  # when it last started waiting (for queue_time)
    admitted_before: bool = False

    @property
    def sampling(self) -> SamplingParams:
        return self.state.params

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


@dataclass(eq=False)
class Request:
    """One call and its choices, with what its final event reports."""

    request_id: str
    seqs: list[Sequence]
    prompt_tokens: int
    # Untagged: the call is its own program, which ends with it.
    own_program: bool = False
    open_choices: int = field(init=False)

    def __post_init__(self) -> None:
        self.open_choices = len(self.seqs)
