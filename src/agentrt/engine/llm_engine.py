"""The synchronous engine core: requests in, token events out, one ``step()`` at a time.

A step has three verbs, as in nano-vllm:

- **schedule**: the policy in ``agentrt.scheduling`` walks its queues and asks
  this engine's :class:`StepAdmission` whether each call fits (KV blocks for
  its whole context, a batch slot, its share of the token budget); calls
  that lost their place are preempted, by swap or recompute, whichever the
  cost model says is cheaper;
- **run**: the model runner executes the flattened batch once and the
  sampler picks the next token of every sequence whose context is complete;
- **postprocess**: the measured model time is charged back to the
  scheduler, the :class:`~agentrt.engine.output_processor.OutputProcessor`
  turns the sampled tokens into events (stop checks, text, logprobs, usage),
  and finished sequences release their blocks.

This class is not thread-safe; :class:`~agentrt.engine.async_engine.AsyncEngine`
owns one from a single worker thread.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Hashable
from typing import Literal

import torch

from agentrt.engine.block_manager import BlockManager, cdiv
from agentrt.engine.config import EngineConfig
from agentrt.engine.loader import LoadedModel, load_model
from agentrt.engine.model_runner import ModelRunner, ScheduledSeq
from agentrt.engine.output_processor import OutputProcessor
from agentrt.engine.sampling import (
    SampledLogprobs,
    Sampler,
    SamplerOutput,
    SamplingState,
    validate_sampling_params,
)
from agentrt.engine.sequence import Request, SeqStatus, Sequence
from agentrt.log import get_logger
from agentrt.protocol.engine import (
    EngineStats,
    InvalidRequest,
    ProgramTag,
    PromptTooLong,
    SamplingParams,
    StepMoments,
    StepRecord,
    Timings,
    TokenEvent,
)
from agentrt.scheduling.call import Call
from agentrt.scheduling.retention import Hold, RetentionPolicy, policy_priority
from agentrt.scheduling.scheduler import make_scheduler

log = get_logger(__name__)

# The token id of a row the sampler failed on: no vocabulary has it.
FAILED_TOKEN = -1

# Starting guesses for the preemption cost model; both are replaced by measurements.
INITIAL_COPY_BYTES_PER_S = 5e9
INITIAL_SECONDS_PER_TOKEN = 1e-3
EMA = 0.2


def prefill_chunk(remaining: int, tokens_left: int, slots_left: int) -> int:
    """Tokens a sequence feeds this step: what it still needs, up to what is left of the
    token budget less one token for each batch slot still open after it (at least one)."""
    return min(remaining, max(1, tokens_left - (slots_left - 1)))


class StepAdmission:
    """The engine's resources for one scheduling decision (the scheduler's ``Admission``).

    Blocks are counted as distinct block ids held by admitted calls (a
    prefix shared by several calls counts once) plus the new blocks each
    admitted call needs, against the whole pool: whatever no admitted call
    holds is free or evictable once the calls that were not admitted are
    preempted. A prefill takes what is left of the token budget, but leaves
    one token for every batch slot still open, so a long prompt does not
    push the running decodes out of the batch.

    A call that holds no KV (waiting, or swapped out) also leaves alone the
    pinned blocks the retention policy holds against it
    (:meth:`~agentrt.scheduling.RetentionPolicy.admission_hold`, the rule the
    simulator's admission applies too); refused for them alone, it is
    ``held_back`` and the scheduler goes on to the calls behind it.
    """

    def __init__(self, engine: LLMEngine, now: float) -> None:
        self.engine = engine
        self.now = now
        self.tokens_left = engine.config.max_num_batched_tokens
        self.slots_left = engine.config.max_num_seqs
        self.held: set[int] = set()
        self.new_blocks = 0
        # seq_id -> (new tokens, prefix hits, offsets of the blocks after them in the host copy)
        self.plan: dict[str, tuple[int, list[int], list[int]]] = {}
        self.held_back = False
        self.held_any = False  # a call was held back in this decision

    def admit(self, call: Call) -> bool:
        self.held_back = False
        seq = self.engine.seqs[call.call_id]
        if self.slots_left == 0 or self.tokens_left == 0:
            return False
        bm = self.engine.block_manager
        hits: list[int] = []
        held: list[int] = []
        restore: list[int] = []
        if seq.status is SeqStatus.WAITING:
            hits = bm.lookup_prefix(seq)
            restore = bm.host_prefix(seq, len(hits))
            computed = (len(hits) + len(restore)) * bm.block_size
            held = hits
        elif seq.status is SeqStatus.RUNNING:
            computed = seq.num_computed_tokens
            held = seq.block_table
        else:  # swapped: its computed context comes back into fresh blocks
            computed = seq.num_computed_tokens
        remaining = seq.num_tokens - computed
        chunk = prefill_chunk(remaining, self.tokens_left, self.slots_left)
        new_held = [b for b in held if b not in self.held]
        new = bm.blocks_for(computed + chunk) - len(held)
        taken = len(self.held) + len(new_held) + self.new_blocks + new
        if taken > bm.num_blocks:
            return False
        if seq.status is not SeqStatus.RUNNING:
            counted = self.held

            def uncounted(pinned: list[Hashable]) -> int:
                mine = set(held)
                return sum(1 for b in pinned if b not in counted and b not in mine)

            hold = bm.evictable.admission_hold(
                call,
                self.now,
                held_any=self.held_any,
                others_running=self.slots_left < self.engine.config.max_num_seqs,
                taken=taken,
                capacity=bm.num_blocks,
                uncounted=uncounted,
            )
            if hold:
                self.held_back = True
                self.held_any = self.held_any or hold is Hold.PINS
                return False
        self.held.update(new_held)
        self.new_blocks += new
        self.tokens_left -= chunk
        self.slots_left -= 1
        self.plan[seq.seq_id] = (chunk, hits, restore)
        return True


def make_runner(model: object, config: EngineConfig) -> ModelRunner:
    """The model runner for ``config``: one process, or rank 0 of a tensor-parallel group or pipeline."""
    if config.tensor_parallel_size * config.pipeline_parallel_size > 1:
        from agentrt.engine.tensor_parallel import ParallelRunner

        return ParallelRunner(model, config)
    return ModelRunner(model, config)


class LLMEngine:
    def __init__(
        self,
        config: EngineConfig | None = None,
        loaded: LoadedModel | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config = config or EngineConfig()
        if loaded is None:
            loaded = load_model(
                config.model or None,
                dtype=config.dtype,
                device=config.device,
                max_model_len=config.max_model_len,
            )
        self.loaded = loaded
        self.tokenizer = loaded.tokenizer
        self.eos_token_ids = loaded.eos_token_ids
        self.clock = clock
        self.runner = make_runner(loaded.model, config)
        cache = self.runner.kv_cache
        # The service unit "auto" resolves to what fits this device (tokens on a CPU).
        self.scheduler_config = config.scheduler.on_device(str(self.runner.device))
        self.scheduler = make_scheduler(self.scheduler_config)
        log.info(
            "scheduler_ready",
            policy=self.scheduler_config.policy,
            service_unit=self.scheduler_config.unit,
        )
        self.block_manager = BlockManager(
            cache.num_blocks,
            config.block_size,
            config.enable_prefix_caching,
            RetentionPolicy(config.retention, cache.num_blocks, policy_priority(self.scheduler)),
            clock,
        )
        self.swap_pool = self.runner.swap_pool(config.swap_space)
        self.block_manager.attach_host(self.swap_pool)
        limit = loaded.max_model_len
        if config.max_model_len is not None:
            limit = min(limit, config.max_model_len)
        # A sequence can never hold more KV than the whole pool.
        self.max_model_len = min(limit, cache.num_blocks * config.block_size)
        self.vocab_size = self.runner.shape.vocab_size
        generator = torch.Generator(device=self.runner.device)
        generator.manual_seed(config.seed)
        self.sampler = Sampler(generator)
        self.output = OutputProcessor(self.tokenizer, self.max_model_len)
        self.token_service = self.scheduler_config.unit == "tokens"
        self.requests: dict[str, Request] = {}
        self.seqs: dict[str, Sequence] = {}
        self.stats_counters = EngineStats(kv_blocks_total=cache.num_blocks)
        self.step_moments = StepMoments()
        self.last_step: StepRecord | None = None
        self._copy_bytes_per_s = INITIAL_COPY_BYTES_PER_S
        self._seconds_per_token = INITIAL_SECONDS_PER_TOKEN
        self._reuse_left = 0  # multi-step: steps left before the scheduler decides again
        self._last_batch: list[Sequence] = []

    # --- intake ------------------------------------------------------------
    def check_request(self, prompt_token_ids: list[int], sampling: SamplingParams) -> int:
        """Validate a call without queueing it; returns its resolved ``max_tokens``.

        Raises :class:`InvalidRequest` (``PromptTooLong`` when it cannot fit the
        context). Pure: safe to call from another thread than the step loop's.
        """
        if not prompt_token_ids:
            raise InvalidRequest("the prompt must contain at least one token", param="prompt")
        if any(not 0 <= t < self.vocab_size for t in prompt_token_ids):
            raise InvalidRequest(
                f"prompt token ids must be in [0, {self.vocab_size})", param="prompt"
            )
        validate_sampling_params(sampling, self.vocab_size)
        prompt_len = len(prompt_token_ids)
        if prompt_len >= self.max_model_len:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens; the prompt has "
                f"{prompt_len} tokens and leaves no room for output",
                param="messages",
            )
        room = self.max_model_len - prompt_len
        if sampling.max_tokens is not None and sampling.max_tokens > room:
            raise PromptTooLong(
                f"This model's maximum context length is {self.max_model_len} tokens; you requested "
                f"{prompt_len + sampling.max_tokens} tokens ({prompt_len} in the prompt, "
                f"{sampling.max_tokens} for the completion)",
                param="max_tokens",
            )
        if sampling.stop and self.tokenizer is None:
            raise InvalidRequest(
                "stop strings need a tokenizer; this engine has none", param="stop"
            )
        return sampling.max_tokens if sampling.max_tokens is not None else room

    def add_request(
        self,
        request_id: str,
        prompt_token_ids: list[int],
        sampling: SamplingParams | None = None,
        program: ProgramTag | None = None,
        priority: int | None = None,
        arrival: float | None = None,
    ) -> list[Sequence]:
        """Queue a call; raises :class:`InvalidRequest` (or ``PromptTooLong``) and changes nothing if it is bad.

        Calls without a program tag are each their own program.
        """
        sampling = sampling or SamplingParams()
        if request_id in self.requests:
            raise InvalidRequest(f"call id {request_id!r} is already in use")
        max_tokens = self.check_request(prompt_token_ids, sampling)
        prompt_len = len(prompt_token_ids)
        now = self.clock()
        arrival = now if arrival is None or arrival <= 0 else arrival
        program_id = program.program_id if program else f"call:{request_id}"
        thread_id = program.thread_id if program else ""
        if program is not None and program.attained_service > 0:
            # Service the program received on other engines (a router tells us): count it too.
            self.scheduler.accounting.credit(program_id, program.attained_service, now)
        seq_ids = (
            [request_id] if sampling.n == 1 else [f"{request_id}#{i}" for i in range(sampling.n)]
        )
        if any(seq_id in self.seqs for seq_id in seq_ids):
            raise InvalidRequest(f"call id {request_id!r} clashes with a running call's choice")
        # Everything that can fail is built before the engine's own state changes.
        seqs = [
            Sequence(
                seq_id=seq_id,
                request_id=request_id,
                index=index,
                token_ids=list(prompt_token_ids),
                num_prompt_tokens=prompt_len,
                state=SamplingState(
                    sampling,
                    prompt_token_ids=prompt_token_ids,
                    choice_index=index,
                    eos_token_ids=self.eos_token_ids,
                    device=self.runner.device,
                ),
                detokenizer=self.output.detokenizer(sampling, prompt_token_ids),
                max_tokens=max_tokens,
                arrival=arrival,
                call=Call(
                    seq_id,
                    program_id,
                    arrival=arrival,
                    prompt_tokens=prompt_len,
                    thread_id=thread_id,
                    priority=priority,
                ),
                timings=Timings(arrival=arrival),
                last_queued=now,
            )
            for index, seq_id in enumerate(seq_ids)
        ]
        for seq in seqs:
            self.seqs[seq.seq_id] = seq
            self.scheduler.add(seq.call, now)
        self.block_manager.call_arrived(program_id, now)
        self.requests[request_id] = Request(
            request_id, seqs, prompt_len, own_program=program is None
        )
        return seqs

    def start_program(self, program_id: str) -> None:
        """A program started: its process-table entry exists from now on."""
        self.scheduler.table.start(program_id, self.clock())

    def end_program(self, program_id: str) -> None:
        """A program ended: its entry goes now, or with its last live call."""
        self.scheduler.table.end(program_id, self.clock())
        self.block_manager.program_ended(program_id)

    def tool_started(self, program_id: str, tool: str | None = None) -> None:
        """The client says ``program_id`` entered a tool (its KV retention holds the context)."""
        self.block_manager.tool_started(program_id, tool)

    def tool_ended(self, program_id: str) -> None:
        """The client says ``program_id``'s tool ended (its next call is about to come)."""
        self.block_manager.tool_ended(program_id)

    def abort_request(
        self, request_id: str, reason: Literal["abort", "error"] = "abort"
    ) -> list[TokenEvent]:
        """Drop a call and free everything it holds.

        Returns a final event with ``finish_reason=reason`` for each choice
        still open (the last one carries usage and timings); empty if the call
        is unknown or done. ``"error"`` is how a call the engine failed on
        ends (see :meth:`step`).
        """
        request = self.requests.get(request_id)
        if request is None:
            return []
        now = self.clock()
        events: list[TokenEvent] = []
        for seq in request.seqs:
            if not seq.is_finished:
                self.scheduler.abort(seq.seq_id, now)
                seq.finish_reason = reason
                seq.timings.finished = now
                self._release(seq)
                events.append(TokenEvent(call_id=request_id, index=seq.index, finish_reason=reason))
        self._last_batch = [s for s in self._last_batch if not s.is_finished]
        for event in events:
            self._complete(event, now)
        return events

    def close(self) -> None:
        """Stop what the engine started outside this process (tensor-parallel workers)."""
        self.runner.close()

    def has_unfinished_requests(self) -> bool:
        return bool(self.requests)

    # --- step --------------------------------------------------------------
    def step(self) -> list[TokenEvent]:
        """Run one engine step; returns the token events it produced (possibly none).

        A failure while sampling or post-processing one call ends that call
        (``finish_reason="error"``) and no other; a failure of the model
        itself propagates, since no call in the batch can go on.
        """
        began = time.perf_counter()
        batch = self._schedule()
        if not batch:
            return []
        prefill, decode, kv = self._step_shape(batch)
        started = time.perf_counter()
        logits = self.runner.execute(batch)
        to_sample = [item.seq for item in batch if item.samples]
        sampled = self._sample(logits, to_sample) if to_sample else None
        elapsed = time.perf_counter() - started
        events = self._postprocess(batch, sampled, elapsed)
        # The simulator's cost model is fitted to these (bench engine, /v1/engine/stats).
        self.last_step = StepRecord(prefill, decode, kv, time.perf_counter() - began)
        self.step_moments = self.step_moments.plus(StepMoments.of(self.last_step))
        return events

    def _sample(self, logits: torch.Tensor, seqs: list[Sequence]) -> SamplerOutput:
        """Sample the whole batch at once; if that fails, row by row, so only a failing row is lost.

        A row that cannot be sampled gets the token id ``-1``, which
        :meth:`_postprocess` turns into the end of its call.
        """
        states = [seq.state for seq in seqs]
        try:
            return self.sampler(logits, states)
        except Exception:
            log.exception("batch_sampling_failed", rows=len(states))
        token_ids: list[int] = []
        logprobs: list[SampledLogprobs | None] = []
        for row, state in enumerate(states):
            try:
                out = self.sampler(logits[row : row + 1], [state])
            except Exception:
                log.exception("sampling_failed", call=seqs[row].seq_id)
                token_ids.append(FAILED_TOKEN)
                logprobs.append(None)
            else:
                token_ids.extend(out.token_ids)
                logprobs.extend(out.logprobs)
        return SamplerOutput(token_ids, logprobs)

    @staticmethod
    def _step_shape(batch: list[ScheduledSeq]) -> tuple[int, int, int]:
        """Prompt tokens fed, sequences decoding one token, KV tokens attended (after the step)."""
        prefill = decode = kv = 0
        for item in batch:
            seq = item.seq
            if item.num_tokens == 1 and seq.num_computed_tokens >= seq.num_prompt_tokens:
                decode += 1
            else:
                prefill += item.num_tokens
            kv += seq.num_computed_tokens + item.num_tokens
        return prefill, decode, kv

    def _schedule(self) -> list[ScheduledSeq]:
        if self._reuse_left > 0:
            self._reuse_left -= 1
            continued = self._continue_last_batch()
            if continued:
                return continued
        now = self.clock()
        admission = StepAdmission(self, now)
        decision = self.scheduler.schedule(now, admission)
        admitted = {call.call_id for call in decision.batch}
        victims = [self.seqs[c.call_id] for c in decision.preempted]
        # Anything still holding KV that did not make the batch gives it up too.
        victims += [
            s
            for s in self._last_batch
            if s.status is SeqStatus.RUNNING and s.seq_id not in admitted and s not in victims
        ]
        for seq in victims:
            if seq.status is SeqStatus.RUNNING:
                self._preempt(seq, now)
        batch: list[ScheduledSeq] = []
        seqs = [self.seqs[c.call_id] for c in decision.batch]
        plan = admission.plan
        for seq in seqs:  # acquire every prefix hit before any allocation can evict one
            if seq.status is SeqStatus.WAITING:
                _, hits, restore = plan[seq.seq_id]
                self.block_manager.acquire_prefix(seq, hits, restoring=len(restore))
        for seq in seqs:
            chunk, _, restore = plan[seq.seq_id]
            if restore:
                self.block_manager.restore_prefix(seq, restore)
            self._prepare_to_run(seq, chunk, now)
            batch.append(ScheduledSeq(seq, chunk))
        self._last_batch = seqs
        self._reuse_left = self.config.num_scheduler_steps - 1
        return self._decodes_first(batch)

    def _continue_last_batch(self) -> list[ScheduledSeq] | None:
        """Multi-step scheduling: run the last decision's calls again, if they all still fit."""
        seqs = [s for s in self._last_batch if s.status is SeqStatus.RUNNING]
        if not seqs:
            return None
        bm = self.block_manager
        tokens_left = self.config.max_num_batched_tokens
        plan: list[ScheduledSeq] = []
        need = 0
        for i, seq in enumerate(seqs):
            chunk = prefill_chunk(seq.num_uncomputed_tokens, tokens_left, len(seqs) - i)
            if chunk <= 0 or tokens_left <= 0:
                return None
            tokens_left -= chunk
            need += max(0, bm.blocks_for(seq.num_computed_tokens + chunk) - len(seq.block_table))
            plan.append(ScheduledSeq(seq, chunk))
        if need > bm.num_free_blocks:
            return None
        for item in plan:
            bm.allocate(item.seq, item.seq.num_computed_tokens + item.num_tokens)
        return self._decodes_first(plan)

    @staticmethod
    def _decodes_first(batch: list[ScheduledSeq]) -> list[ScheduledSeq]:
        # The model runner batches single-token sequences together; they must lead.
        return [b for b in batch if b.num_tokens == 1] + [b for b in batch if b.num_tokens > 1]

    def _prepare_to_run(self, seq: Sequence, chunk: int, now: float) -> None:
        bm = self.block_manager
        if seq.status is SeqStatus.SWAPPED:
            handle = seq.swap_handle
            assert handle is not None  # a swapped sequence holds its host range
            bm.allocate(seq, seq.num_computed_tokens)
            self.swap_pool.swap_in(handle, seq.block_table[: handle.num_blocks])
            seq.swap_handle = None
        bm.allocate(seq, seq.num_computed_tokens + chunk)
        if seq.status is not SeqStatus.RUNNING:
            seq.status = SeqStatus.RUNNING
            seq.timings.queue_time += max(0.0, now - seq.last_queued)
            if seq.timings.first_scheduled is None:
                seq.timings.first_scheduled = now
            seq.admitted_before = True

    # --- preemption -------------------------------------------------------
    def _preempt(self, seq: Sequence, now: float) -> None:
        """Take ``seq``'s KV away: swap it to host or drop it for recompute, whichever costs less."""
        seq.last_queued = now
        seq.timings.preemptions += 1
        if seq.num_computed_tokens == 0 or not seq.block_table:
            self.block_manager.free(seq)
            seq.num_computed_tokens = 0
            seq.status = SeqStatus.WAITING
            return
        blocks = len(seq.block_table)
        full_blocks = cdiv(seq.num_computed_tokens, self.config.block_size)
        swap = self._prefer_swap(seq, full_blocks)
        if swap:
            started = time.perf_counter()
            handle = self.swap_pool.swap_out(seq.block_table[:full_blocks])
            if handle is not None:
                seconds = time.perf_counter() - started
                self._observe_copy(full_blocks * self.runner.kv_cache.block_bytes, seconds)
                seq.swap_handle = handle
                self.block_manager.free(seq)
                seq.status = SeqStatus.SWAPPED
                self.stats_counters.preemptions_swap += 1
                log.debug("swapped_out", call=seq.seq_id, blocks=blocks, seconds=seconds)
                return
        self.block_manager.free(seq)
        seq.num_computed_tokens = 0
        seq.status = SeqStatus.WAITING
        self.stats_counters.preemptions_recompute += 1
        log.debug("preempted_for_recompute", call=seq.seq_id, tokens=seq.num_tokens)

    def _prefer_swap(self, seq: Sequence, num_blocks: int) -> bool:
        mode = self.config.preemption_mode
        if mode != "recompute":
            self.block_manager.make_host_room(num_blocks)  # host copies of lost contexts go first
        if mode == "recompute" or not self.swap_pool.can_hold(num_blocks):
            return False
        if mode == "swap":
            return True
        # Out and back in again, against re-running the context through the model.
        swap_cost = 2 * num_blocks * self.runner.kv_cache.block_bytes / self._copy_bytes_per_s
        recompute_cost = seq.num_computed_tokens * self._seconds_per_token
        return swap_cost < recompute_cost

    def _observe_copy(self, nbytes: int, seconds: float) -> None:
        if seconds > 0:
            self._copy_bytes_per_s += EMA * (nbytes / seconds - self._copy_bytes_per_s)

    # --- postprocess ------------------------------------------------------
    def _postprocess(
        self,
        batch: list[ScheduledSeq],
        sampled: SamplerOutput | None,
        elapsed: float,
    ) -> list[TokenEvent]:
        now = self.clock()
        counters = self.stats_counters
        counters.steps += 1
        total_tokens = sum(item.num_tokens for item in batch)
        sampling_items = [item for item in batch if item.samples]  # before the counts move
        self._seconds_per_token += EMA * (elapsed / total_tokens - self._seconds_per_token)
        for item in batch:
            seq = item.seq
            seq.num_computed_tokens += item.num_tokens
            self.block_manager.register_computed_blocks(seq)
            seq.timings.model_time += elapsed * item.num_tokens / total_tokens
            # Scheduler service is the whole step (the unit of SchedulerConfig's
            # time defaults); a token share would shrink with the batch.
            self.scheduler.charge(
                seq.call, float(item.num_tokens) if self.token_service else elapsed, now
            )
        events: list[TokenEvent] = []
        if sampled is None:
            return events
        failed: list[str] = []
        token_ids, logprobs = sampled.token_ids, sampled.logprobs
        for item, token, lp in zip(sampling_items, token_ids, logprobs, strict=True):
            seq = item.seq
            if seq.request_id in failed:
                continue
            try:
                if token == FAILED_TOKEN:
                    raise RuntimeError("no token could be sampled")
                event = self.output.accept(seq, token, lp, now)
                if event.finish_reason is not None:
                    self.scheduler.finish(seq.seq_id, now)
                    self._retain(seq)
                    self._release(seq)
            except Exception:
                log.exception("call_failed_in_step", call=seq.seq_id)
                failed.append(seq.request_id)
                continue
            events.append(event)
            counters.generated_tokens += 1
        for event in [e for e in events if e.finish_reason is not None]:
            self._complete(event, now)
        for request_id in failed:
            events.extend(self.abort_request(request_id, "error"))
        return events

    def _complete(self, event: TokenEvent, now: float) -> None:
        """A choice finished; on the call's last choice, attach usage and timings and forget it."""
        request = self.requests.get(event.call_id)
        if request is None:
            return
        request.open_choices -= 1
        if request.open_choices > 0:
            return
        self.output.close(event, request, now)
        del self.requests[request.request_id]
        for seq in request.seqs:
            self.seqs.pop(seq.seq_id, None)
        if request.own_program:
            self.end_program(request.seqs[0].call.program_id)

    def _retain(self, seq: Sequence) -> None:
        """Offer a completed sequence's context to the retention policy (before its release).

        Calls wait on memory once no never-used block is left: only then does a pin cost
        the waiting calls anything (it yields to running ones regardless)."""
        bm = self.block_manager
        waiting = len(self.scheduler) - len(self.scheduler.running) if not bm.free_ids else 0
        ttl = bm.call_finished(seq, self._seconds_per_token, waiting, self.config.max_num_seqs)
        seq.timings.kv_retained_s = ttl

    def _release(self, seq: Sequence) -> None:
        """Give back whatever KV the sequence holds, on device or host."""
        if seq.swap_handle is not None:
            self.swap_pool.release(seq.swap_handle)
            seq.swap_handle = None
        self.block_manager.free(seq)
        seq.status = SeqStatus.FINISHED

    # --- introspection ----------------------------------------------------
    def stats(self) -> EngineStats:
        c = self.stats_counters
        bm = self.block_manager
        compiled = self.runner.compiled
        static = compiled.static if compiled is not None else None
        levels = [0] * self.config.scheduler.num_queues
        running = waiting = swapped = 0
        for seq in self.seqs.values():
            if seq.is_finished:
                continue
            levels[min(seq.call.level, len(levels) - 1)] += 1
            if seq.status is SeqStatus.RUNNING:
                running += 1
            elif seq.status is SeqStatus.SWAPPED:
                swapped += 1
            else:
                waiting += 1
        return EngineStats(
            running=running,
            waiting=waiting,
            swapped=swapped,
            kv_blocks_total=bm.num_blocks,
            kv_blocks_used=bm.num_used_blocks,
            kv_usage=bm.num_used_blocks / bm.num_blocks,
            prefix_hit_rate=bm.prefix_hit_rate,
            prefix_queried_tokens=bm.prefix_queried_tokens,
            prefix_hit_tokens=bm.prefix_hit_tokens,
            preemptions_swap=c.preemptions_swap,
            preemptions_recompute=c.preemptions_recompute,
            steps=c.steps,
            generated_tokens=c.generated_tokens,
            kv_pinned_blocks=bm.evictable.pinned_blocks,
            kv_pins=bm.evictable.counters.pins,
            kv_pins_reused=bm.evictable.counters.reused,
            kv_pins_expired=bm.evictable.counters.expired,
            kv_pins_yielded=bm.evictable.counters.yielded,
            kv_pins_held=bm.evictable.counters.held,
            kv_contexts_lost=bm.evictable.counters.lost,
            kv_contexts_offloaded=bm.offloads,
            kv_contexts_restored=bm.restores,
            kv_admissions_held=bm.evictable.counters.held_back,
            kv_admissions_held_seconds=bm.evictable.counters.held_back_s,
            recomputed_prompt_tokens=bm.recomputed_prompt_tokens,
            compiled_decode_steps=compiled.steps if compiled is not None else 0,
            cuda_graph_replays=static.graph_replays if static is not None else 0,
            calls_per_level=levels,
            step_moments=self.step_moments,
        )

    # --- offline use --------------------------------------------------------
    def generate(
        self,
        prompts: list[list[int]],
        sampling: SamplingParams | list[SamplingParams] | None = None,
    ) -> list[list[list[int]]]:
        """Run ``prompts`` to completion; returns each prompt's choices' output token ids."""
        params = (
            sampling
            if isinstance(sampling, list)
            else [sampling or SamplingParams()] * len(prompts)
        )
        ids = [f"offline-{i}-{time.monotonic_ns()}" for i in range(len(prompts))]
        outputs: dict[str, list[list[int]]] = {}
        for request_id, prompt, p in zip(ids, prompts, params, strict=True):
            self.add_request(request_id, prompt, p)
            outputs[request_id] = [[] for _ in range(p.n)]
        while self.has_unfinished_requests():
            steps = self.stats_counters.steps
            events = self.step()
            if self.stats_counters.steps == steps:
                raise RuntimeError("the scheduler admitted nothing although calls are waiting")
            for event in events:
                if event.call_id in outputs:
                    outputs[event.call_id][event.index].extend(event.token_ids)
        return [outputs[i] for i in ids]
