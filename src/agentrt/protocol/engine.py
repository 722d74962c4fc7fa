"""The contract between the serving layer and whatever generates tokens.

The embedded engine (``agentrt.engine``), a remote OpenAI-compatible server
(vLLM, SGLang) and a Ray actor all implement :class:`EngineClient`; the router
implements it too, so the ASGI app only ever talks to one ``EngineClient``.
These types are plain msgspec Structs and a Protocol: no torch here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable
from typing import Any, Literal, Protocol, runtime_checkable

import msgspec

from agentrt.protocol.programs import ToolEvent

FinishReason = Literal["stop", "length", "abort", "error", "tool_calls"]


class SamplingParams(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Per-request sampling parameters (OpenAI's plus vLLM's extras).

    Their bounds are in :mod:`agentrt.protocol.limits`.
    """

    max_tokens: int | None = None  # None: up to the model's context
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = -1  # -1: disabled
    min_p: float = 0.0
    seed: int | None = None
    stop: list[str] = msgspec.field(default_factory=list)
    stop_token_ids: list[int] = msgspec.field(default_factory=list)
    ignore_eos: bool = False
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    repetition_penalty: float = 1.0
    n: int = 1
    logprobs: bool = False
    top_logprobs: int = 0
    # OpenAI's logit_bias: token id -> value added to its logit before sampling.
    logit_bias: dict[int, float] = msgspec.field(default_factory=dict)


class ProgramTag(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Which program, thread and parent call an LLM call belongs to (from the SDK headers)."""

    program_id: str
    thread_id: str = ""
    parent_call_id: str | None = None
    tenant: str = ""
    # Set by a router in front of several engines: the service the program has
    # attained across all of them (scheduler unit). An engine starts the
    # program's priority at no less than this, so PLAS/ATLAS see the whole
    # program even when its calls are spread over replicas.
    attained_service: float = 0.0


class GenerationRequest(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One LLM call, as the router hands it to an engine.

    Exactly one of ``prompt`` (text or token ids, completions API) or
    ``messages`` (chat API; the engine applies the model's chat template with
    ``tools``) is set.
    """

    call_id: str
    model: str = ""
    prompt: str | list[int] | None = None
    messages: list[dict[str, Any]] | None = None
    tools: list[dict[str, Any]] | None = None
    sampling: SamplingParams = msgspec.field(default_factory=SamplingParams)
    program: ProgramTag | None = None
    # Explicit priority from the request body (vLLM's field: lower runs sooner).
    priority: int | None = None
    arrival_time: float = 0.0  # time.monotonic() when the server received it


class TopLogprob(msgspec.Struct, frozen=True):
    token_id: int
    token: str
    logprob: float


class TokenLogprob(msgspec.Struct, frozen=True):
    token_id: int
    token: str
    logprob: float
    top: list[TopLogprob] = []


class Usage(msgspec.Struct, kw_only=True):
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cached_tokens: int = 0  # prompt tokens served from the prefix cache


class Timings(msgspec.Struct, kw_only=True, omit_defaults=True):
    """Per-call timings in seconds (monotonic clock), filled in as they become known."""

    arrival: float = 0.0
    first_scheduled: float | None = None
    first_token: float | None = None
    finished: float | None = None
    queue_time: float = 0.0  # total time spent waiting (incl. while preempted)
    model_time: float = 0.0  # model-executor time attributed to this call
    preemptions: int = 0
    # Seconds the engine keeps the call's context pinned for its program's next call (its KV
    # retention's TTL; None: not pinned). A router sends that call back to this engine.
    kv_retained_s: float | None = None


class TokenEvent(msgspec.Struct, kw_only=True, omit_defaults=True):
    """One increment of one choice's output; the last event of a choice has ``finish_reason``.

    ``text`` is the newly decodable text (multi-byte pieces are held back until
    complete); ``token_ids`` are the tokens this event covers (may be empty
    when only a held-back piece is released).
    """

    call_id: str
    index: int = 0  # choice index, for n > 1
    token_ids: list[int] = []
    text: str = ""
    logprobs: list[TokenLogprob] | None = None
    finish_reason: FinishReason | None = None
    stop_reason: str | int | None = None  # the stop string or token that ended it
    usage: Usage | None = None  # on the final event of the call
    timings: Timings | None = None  # on the final event of the call


class StepRecord(msgspec.Struct, frozen=True):
    """One engine step as the simulator's cost model sees it."""

    prefill_tokens: int  # prompt (or recomputed) tokens fed this step
    decode_seqs: int  # sequences that fed exactly one token after their prompt
    kv_tokens: int  # context tokens the step's sequences attend over (after the step)
    seconds: float  # wall time of the whole step (schedule, swaps, model, sampling, postprocess)


class StepMoments(msgspec.Struct, kw_only=True):
    """Running sums from which the step-time model is fitted, over every step an engine ran.

    The model (the simulator's, :mod:`agentrt.sim.profile`) is ``seconds = a +
    b * prefill_tokens + c * decode_seqs + d * kv_tokens``; least squares needs
    only ``X^T X`` (``xx``: its upper triangle, row by row, over the features
    ``(1, prefill, decode, kv)``), ``X^T y`` (``xy``) and ``y^T y`` (``yy``).
    Sums add: the moments of two engines, or of a run (after minus before),
    are fitted like one engine's, so a live server can report its own cost
    model without keeping a record per step. Values are never changed in
    place (``plus`` makes a new one), so a reader on another thread never
    sees a step half added.
    """

    xx: list[float] = msgspec.field(default_factory=lambda: [0.0] * 10)
    xy: list[float] = msgspec.field(default_factory=lambda: [0.0] * 4)
    yy: float = 0.0

    @property
    def steps(self) -> int:
        return round(self.xx[0])  # the sum of the constant feature 1 * 1

    @classmethod
    def of(cls, step: StepRecord) -> StepMoments:
        """The sums of one step."""
        features = (1.0, float(step.prefill_tokens), float(step.decode_seqs), float(step.kv_tokens))
        return cls(
            xx=[features[i] * features[j] for i in range(4) for j in range(i, 4)],
            xy=[f * step.seconds for f in features],
            yy=step.seconds * step.seconds,
        )

    @classmethod
    def total(cls, steps: Iterable[StepRecord]) -> StepMoments:
        moments = cls()
        for step in steps:
            moments = moments.plus(cls.of(step))
        return moments

    def plus(self, other: StepMoments, sign: float = 1.0) -> StepMoments:
        return StepMoments(
            xx=[a + sign * b for a, b in zip(self.xx, other.xx, strict=True)],
            xy=[a + sign * b for a, b in zip(self.xy, other.xy, strict=True)],
            yy=self.yy + sign * other.yy,
        )

    def minus(self, earlier: StepMoments) -> StepMoments:
        """The steps run since ``earlier`` (a snapshot of the same engine)."""
        return self.plus(earlier, -1.0)


class EngineStats(msgspec.Struct, kw_only=True):
    """A snapshot of an engine's load, for metrics and the load balancer."""

    running: int = 0
    waiting: int = 0
    swapped: int = 0
    kv_blocks_total: int = 0
    kv_blocks_used: int = 0
    kv_usage: float = 0.0  # 0..1
    prefix_hit_rate: float = 0.0  # 0..1, over the engine's lifetime
    # Prompt tokens looked up in the prefix cache, and of those found cached (lifetime totals).
    prefix_queried_tokens: int = 0
    prefix_hit_tokens: int = 0
    preemptions_swap: int = 0
    preemptions_recompute: int = 0
    steps: int = 0
    generated_tokens: int = 0
    # KV retention (agentrt.scheduling.RetentionPolicy): blocks pinned to programs now;
    # pins made, reused by the program's next call, expired first, yielded to pressure;
    # prompt tokens of a program's previous context (the full blocks its last call
    # computed) that its next call computed again because they had been evicted.
    kv_pinned_blocks: int = 0
    kv_pins: int = 0
    kv_pins_reused: int = 0
    kv_pins_expired: int = 0
    kv_pins_yielded: int = 0
    kv_pins_held: int = 0  # held past their TTL while the client said their tool was running
    # Contexts lost while their program may come back (pins yielded, expired, displaced;
    # unpinned contexts of live programs evicted), those copied to the host pool, and
    # those copied back for their program's next call.
    kv_contexts_lost: int = 0
    kv_contexts_offloaded: int = 0
    kv_contexts_restored: int = 0
    # Calls pins held back from admission ([engine.retention] max_hold_s), each counted once,
    # and the seconds from each one's first hold to its admission.
    kv_admissions_held: int = 0
    kv_admissions_held_seconds: float = 0.0
    recomputed_prompt_tokens: int = 0
    # Decode steps the embedded engine ran through its compiled graphs, and of those the
    # steps replayed as CUDA graphs ([engine] compile, cuda_graphs).
    compiled_decode_steps: int = 0
    cuda_graph_replays: int = 0
    # Live calls (waiting or running) per scheduler queue level, top level first.
    calls_per_level: list[int] = msgspec.field(default_factory=list)
    # Step-time sums over the engine's lifetime (empty for engines that do not time steps).
    step_moments: StepMoments = msgspec.field(default_factory=StepMoments)

    def plus(self, other: EngineStats) -> EngineStats:
        """The stats of two engines as one: counts add (per level for ``calls_per_level``),
        ``kv_usage`` is that of the summed pools, ``prefix_hit_rate`` their mean weighted
        by KV pool size."""
        summed: dict[str, Any] = {}
        for name in self.__struct_fields__:
            mine, theirs = getattr(self, name), getattr(other, name)
            if isinstance(mine, int) or name == "kv_admissions_held_seconds":
                summed[name] = mine + theirs
        levels = [0] * max(len(self.calls_per_level), len(other.calls_per_level))
        for counts in (self.calls_per_level, other.calls_per_level):
            for level, count in enumerate(counts):
                levels[level] += count
        blocks = summed["kv_blocks_total"]
        hit_rate = 0.0
        if blocks:
            hit_rate = (
                self.prefix_hit_rate * self.kv_blocks_total
                + other.prefix_hit_rate * other.kv_blocks_total
            ) / blocks
        return EngineStats(
            **summed,
            kv_usage=summed["kv_blocks_used"] / blocks if blocks else 0.0,
            prefix_hit_rate=hit_rate,
            calls_per_level=levels,
            step_moments=self.step_moments.plus(other.step_moments),
        )


class ModelInfo(msgspec.Struct, kw_only=True):
    id: str
    max_model_len: int
    owned_by: str = "agentrt"


class EngineError(Exception):
    """Base class for errors an engine reports about one request.

    ``status`` and ``type`` map onto the OpenAI error schema on the wire.
    """

    status: int = 500
    type: str = "internal_error"
    code: str | None = None
    param: str | None = None

    def __init__(self, message: str, *, param: str | None = None) -> None:
        super().__init__(message)
        if param is not None:
            self.param = param


class InvalidRequest(EngineError):
    """Bad parameters or a prompt the engine cannot serve (e.g. longer than the context)."""

    status = 400
    type = "invalid_request_error"


class PromptTooLong(InvalidRequest):
    code = "context_length_exceeded"


class EngineOverloaded(EngineError):
    """The engine refuses new work for now; the server answers 429 with Retry-After."""

    status = 429
    type = "rate_limit_error"
    retry_after: float = 1.0


class EngineUnavailable(EngineError):
    """The engine died or cannot be reached; in-flight calls on it fail with this (503)."""

    status = 503
    type = "service_unavailable"


@runtime_checkable
class EngineClient(Protocol):
    """What the serving layer needs from anything that generates tokens."""

    def generate(self, request: GenerationRequest) -> AsyncIterator[TokenEvent]:
        """Stream the call's token events (an async generator); raise :class:`EngineError` for a bad request (at the first ``__anext__`` at the latest).

        Leaving the iterator early (``aclose``) aborts the call and frees its KV.
        """
        ...

    async def abort(self, call_id: str) -> None:
        """Abort a call; a no-op if it already finished."""
        ...

    def stats(self) -> EngineStats: ...

    def models(self) -> list[ModelInfo]: ...

    async def start_program(self, tag: ProgramTag) -> None:
        """A program started (SDK's POST /v1/programs); engines without a process table ignore it."""
        ...

    async def end_program(self, program_id: str) -> None:
        """A program ended; its process-table entry may be dropped."""
        ...

    async def close(self) -> None: ...


@runtime_checkable
class ToolSignals(Protocol):
    """An engine that hears when a program's tool starts and ends (``POST /programs/{id}/tool``);
    the server forwards these signals to engines that have this method only."""

    async def tool_event(self, program_id: str, event: ToolEvent) -> None:
        """A thread of ``program_id`` (tenant-scoped) entered or left a tool."""
        ...
