"""A simulated engine: the profile's cost model driven by the shared scheduler.

Each *window* the engine asks its :class:`~agentrt.scheduling.Scheduler` for a
batch (multi-step scheduling, as in Autellix and vLLM: one decision every
``steps`` decode steps), handles the preempted calls (swap their KV to the
host pool or drop it for recompute), swaps in or prefills the batch, and runs
``steps`` steps in closed form: chunked prefill up to the profile's token
budget per step, one token per decoding sequence per step. A call that
finishes inside the window leaves its slot idle until the next decision.

A call is charged the model-executor time (the paper's service) of the
steps it took part in: the whole duration of each such step, as vLLM
accumulates model time per request and as the embedded engine charges its
scheduler (:mod:`agentrt.scheduling.config` states the unit). With
``charge_wall_time=False`` it is charged its token share of each step
instead (the step's duration split over the tokens it processed); that
reading makes a decoding call earn ~1/batch of a step, so it stays in the top
queue and the queue policies degenerate to FCFS: kept for comparison only.
In token mode a call is charged the tokens processed.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from typing import Literal, cast

from agentrt.scheduling import (
    Call,
    Hold,
    Pressure,
    RetentionConfig,
    RetentionPolicy,
    Scheduler,
    policy_priority,
)
from agentrt.sim.kv import KvCache
from agentrt.sim.profile import EngineProfile
from agentrt.sim.spec import CallSpec, Segment

PreemptionMode = Literal["swap", "recompute"]


class LiveCall:
    """One call in flight on a simulated engine: its spec, scheduler handle and KV progress."""

    __slots__ = (
        "call",
        "computed",
        "engine",
        "executing",
        "finished",
        "generated",
        "max_blocks",
        "on_gpu",
        "preemptions",
        "program",
        "ready",
        "service",
        "spec",
        "swapped",
    )

    def __init__(
        self, spec: CallSpec, call: Call, program: object, engine: SimEngine, ready: float
    ) -> None:
        self.spec = spec
        self.call = call
        self.program = program
        self.engine = engine
        self.ready = ready
        self.computed = 0  # tokens of the sequence with KV on the GPU (when on_gpu)
        self.generated = 0
        self.on_gpu = False
        self.swapped: list[Segment] = []  # (key, tokens) held in the host pool
        self.service = 0.0  # the call's token share of the steps' time (its work, for metrics)
        self.executing = 0.0  # wall seconds of the steps it took part in
        self.preemptions = 0
        self.finished = 0.0
        self.max_blocks = 0  # most KV blocks it can ever need (see SimEngine.add)

    def prefill_needed(self) -> int:
        """Tokens to compute before the next token can be sampled: 0 while decoding
        (only the newest token's KV is missing), else the uncomputed part of the context."""
        missing = self.spec.prompt_tokens + self.generated - self.computed
        return 0 if self.generated and missing == 1 else missing

    @property
    def target(self) -> int:
        """Tokens whose KV the next token needs: the prompt plus what was generated."""
        return self.spec.prompt_tokens + self.generated


class WindowAdmission:
    """The engine's resource model for one decision (implements scheduling's ``Admission``):
    a batch slot, KV blocks for the call's context through the window, prefill budget.

    A call not on the GPU also leaves alone the pinned keys the retention policy
    holds against it (:meth:`~agentrt.scheduling.RetentionPolicy.admission_hold`, the rule
    the engine's admission applies too); refused for them alone, it is ``held_back``
    and the scheduler goes on to the calls behind it."""

    def __init__(self, engine: SimEngine, steps: int, now: float) -> None:
        self.engine = engine
        self.steps = steps
        self.now = now
        self.held_back = False
        self.held_any = False  # a call was held back in this decision
        self.slots = engine.profile.max_batch_size
        self.prefill_left = engine.profile.prefill_budget * steps
        self.blocks = 0
        self.reserved: dict[str, int] = {}
        # Every live call at its largest fits at once: no call can be refused for KV,
        # so the per-segment reservation below is skipped (it is most of a decision's cost).
        # (Not while pins may hold blocks against admissions: they are counted per key.)
        self.fits_all = (
            engine.key_tokens is not None
            and engine.demand_blocks <= engine.kv.capacity
            and not engine.retention.pinned_units()
        )

    def admit(self, call: Call) -> bool:
        self.held_back = False
        if not self.slots:
            return False
        engine = self.engine
        live = engine.live[call.call_id]
        spec = live.spec
        kv = engine.kv
        target = spec.prompt_tokens + live.generated
        if live.on_gpu:
            prefill = live.prefill_needed()
        elif live.swapped:
            prefill = 0
        else:
            prefill = target - kv.cached_prefix(spec.segments, target - 1)
        if prefill > 0 and not self.prefill_left:
            return False
        if self.fits_all:
            if engine.retention.holding_back:
                engine.retention.hold_ended(call.call_id, self.now)
            self.slots -= 1
            if prefill > 0:
                self.prefill_left -= prefill if prefill < self.prefill_left else self.prefill_left
            return True
        need = target + self.steps
        total = spec.prompt_tokens + spec.decode_tokens
        if need > total:
            need = total
        reserved = self.reserved
        resident = kv.resident
        bs = kv.block_size
        extra = 0
        updates: list[tuple[str, int]] = []
        for (key, n), start in zip(spec.segments, spec.starts, strict=True):
            if start >= need:
                break
            tokens = need - start
            if tokens > n:
                tokens = n
            have = reserved.get(key)
            if have is not None and tokens <= have:
                continue
            held = resident.get(key, 0)
            if have is None:
                extra += -(-(tokens if tokens > held else held) // bs)
            else:
                extra += -(-(tokens if tokens > held else held) // bs) - -(
                    -(have if have > held else held) // bs
                )
            updates.append((key, tokens))
        if self.blocks + extra > kv.capacity:
            engine.kv_bound = True
            return False
        if not live.on_gpu:

            def uncounted(pinned: list[Hashable]) -> int:
                mine = {key for key, _ in spec.segments}
                return sum(
                    -(-resident.get(key, 0) // bs)  # type: ignore[call-overload]
                    for key in pinned
                    if key not in reserved and key not in mine
                )

            hold = engine.retention.admission_hold(
                call,
                self.now,
                held_any=self.held_any,
                others_running=self.slots < engine.profile.max_batch_size,
                taken=self.blocks + extra,
                capacity=kv.capacity,
                uncounted=uncounted,
            )
            if hold:
                self.held_back = True
                if hold is Hold.PINS:
                    engine.kv_bound = self.held_any = True
                return False
        for key, tokens in updates:
            reserved[key] = tokens
        self.blocks += extra
        self.slots -= 1
        if prefill > 0:
            self.prefill_left -= prefill if prefill < self.prefill_left else self.prefill_left
        return True


class EngineCounters:
    """Cumulative counters of one simulated engine."""

    __slots__ = (
        "busy_s",
        "cached_tokens",
        "decode_tokens",
        "offloads",
        "preemptions",
        "prefill_tokens",
        "recomputes",
        "restores",
        "steps",
        "swap_blocks",
        "swap_s",
        "swaps_in",
        "swaps_out",
        "windows",
    )

    def __init__(self) -> None:
        self.busy_s = self.swap_s = 0.0
        self.cached_tokens = self.decode_tokens = self.prefill_tokens = 0
        self.preemptions = self.recomputes = self.swap_blocks = self.swaps_in = self.swaps_out = 0
        self.steps = self.windows = 0
        self.offloads = self.restores = 0  # lost contexts copied to host, and copied back


class SimEngine:
    """One engine: profile, scheduler, KV cache, and the live calls routed to it."""

    def __init__(
        self,
        engine_id: str,
        profile: EngineProfile,
        scheduler: Scheduler,
        preemption: PreemptionMode,
        steps_per_schedule: int,
        charge_wall_time: bool = True,
        key_tokens: dict[str, int] | None = None,
        retention: RetentionConfig | None = None,
    ) -> None:
        if steps_per_schedule < 1:
            raise ValueError("steps_per_schedule must be >= 1")
        self.engine_id = engine_id
        self.profile = profile
        self.scheduler = scheduler
        self.preemption = preemption
        self.steps = steps_per_schedule
        # Which cached KV stays: the same policy object the engine's block manager uses.
        self.retention = RetentionPolicy(
            retention or RetentionConfig(mode="off"),
            profile.kv_blocks,
            policy_priority(scheduler),
        )
        self.kv = KvCache(
            profile.kv_blocks, profile.block_size, profile.prefix_caching, self.retention
        )
        self.host_used = 0  # blocks in the host swap pool (swapped calls and offloaded pins)
        # Lost contexts (see the retention policy) copied to the host pool, by program: (key, tokens), oldest
        # program first; they come back when the program's next call is loaded.
        self.offloaded: dict[str, list[Segment]] = {}
        self._offload_s = 0.0  # copy time of offloads, charged to the next window
        if self.retention.enabled and profile.host_blocks:
            self.retention.on_lost = self._offload
        self.live: dict[str, LiveCall] = {}
        self.busy_until: float | None = None  # end of the running window, None when idle
        self.counters = EngineCounters()
        self._token_mode = scheduler.config.unit == "tokens"
        self.charge_wall_time = charge_wall_time
        # The longest each segment key gets in any call this engine may run (a key's KV never
        # outgrows it): with it, each live call's largest need is bounded, and their sum is
        # ``demand_blocks``. Without it there is no bound and every decision reserves per segment.
        self.key_tokens = key_tokens
        self.demand_blocks = 0
        self.kv_bound = False  # the last decision refused a call for KV blocks

    def add(self, live: LiveCall, now: float) -> None:
        self.live[live.call.call_id] = live
        if self.key_tokens is not None:
            key_tokens, blocks = self.key_tokens, self.kv.blocks
            live.max_blocks = sum(blocks(key_tokens[key]) for key, _ in live.spec.segments)
            self.demand_blocks += live.max_blocks
        self.retention.call_arrived(live.call.program_id, now)
        self.scheduler.add(live.call, now)

    def run_window(self, now: float, on_finish: Callable[[LiveCall, float], None]) -> float | None:
        """Decide and run one window starting at ``now``; returns its end (None: nothing to run).

        ``on_finish(live, time)`` is called for each call that completes, with its
        completion time (inside the window); the caller turns it into an event.
        """
        scheduler = self.scheduler
        if not len(scheduler):
            return None
        self.kv_bound = False
        decision = scheduler.schedule(now, WindowAdmission(self, self.steps, now))
        swap_s, self._offload_s = self._offload_s, 0.0
        for call in decision.preempted:
            swap_s += self._preempt(self.live[call.call_id])
        batch = [self.live[call.call_id] for call in decision.batch]
        if not batch:
            return None
        for live in batch:
            if not live.on_gpu:
                swap_s += self._load(live)
        return self._execute(batch, now, swap_s, on_finish)

    # --- KV movement ---

    def _preempt(self, live: LiveCall) -> float:
        """Take a running call off the GPU; returns the seconds its swap-out costs."""
        self.counters.preemptions += 1
        live.preemptions += 1
        kv = self.kv
        segments = live.spec.segments
        # The whole context goes to the host, shared prefix included (as vLLM swaps every
        # block of the sequence): it may be evicted from the GPU while the call is out,
        # and the call must not then recompute everything behind it.
        held = [(key, kv.resident.get(key, 0)) for key, _ in segments]
        held = [(key, tokens) for key, tokens in held if tokens > 0]
        blocks = sum(kv.blocks(t) for _, t in held)
        seconds = 0.0
        profile = self.profile
        if self.preemption == "swap" and blocks and self._host_room(blocks):
            for key, _ in held:
                if kv.refs.get(key) == 1:  # nobody else uses it: its GPU blocks are freed
                    kv.drop(key)
            self.host_used += blocks
            live.swapped = held
            self.counters.swaps_out += 1
            self.counters.swap_blocks += blocks
            seconds = profile.swap_overhead_s + blocks * profile.swap_block_s
        else:
            self.counters.recomputes += 1
            live.computed = 0
        kv.release(segments, live.call.program_id)
        live.on_gpu = False
        return seconds

    def _load(self, live: LiveCall) -> float:
        """Put a call on the GPU (swap in, or find its cached prefix); returns swap-in seconds."""
        kv = self.kv
        profile = self.profile
        seconds = 0.0
        if live.swapped:
            held = copied = 0
            for key, tokens in live.swapped:
                held += kv.blocks(tokens)
                copied += kv.blocks(tokens) - kv.blocks(min(tokens, kv.resident.get(key, 0)))
                kv.grow(key, tokens)  # blocks still on the GPU (shared) need no copy
            self.host_used -= held
            live.swapped = []
            self.counters.swaps_in += 1
            self.counters.swap_blocks += copied
            seconds = profile.swap_overhead_s + copied * profile.swap_block_s
        else:
            if self.offloaded:
                seconds += self._restore(live)
            live.computed = kv.cached_prefix(live.spec.segments, live.target - 1)
            self.counters.cached_tokens += live.computed
        kv.acquire(live.spec.segments)
        self.retention.call_admitted(live.call.program_id)
        live.on_gpu = True
        return seconds

    # --- the window's steps ---

    def _execute(
        self,
        batch: list[LiveCall],
        now: float,
        swap_s: float,
        on_finish: Callable[[LiveCall, float], None],
    ) -> float:
        profile = self.profile
        steps = self.steps
        count = [0] * (steps + 1)  # decoding sequences per step, as a difference array
        base = [0] * (steps + 1)  # sum over them of (context - first decode step), likewise
        prefill = [0] * steps
        prefill_kv = [0] * steps
        budget = profile.prefill_budget
        step = 0
        left_in_step = budget
        # (call, prefill chunks as (step, tokens), first decode step, last step, tokens emitted)
        plan: list[tuple[LiveCall, Sequence[tuple[int, int]], int, int, int]] = []
        for live in batch:
            decode_left = live.spec.decode_tokens - live.generated
            need = live.prefill_needed()
            first_decode = 0
            emitted = 0
            chunks: Sequence[tuple[int, int]] = ()  # (step, tokens) of its prefill this window
            if need > 0:  # prefill (or recompute) in chunks, in priority order
                if step >= steps:
                    continue  # no budget left in this window: the call idles until the next
                taken: list[tuple[int, int]] = []
                chunks = taken
                done = live.computed
                while need > 0 and step < steps:
                    chunk = need if need < left_in_step else left_in_step
                    need -= chunk
                    done += chunk
                    left_in_step -= chunk
                    prefill[step] += chunk
                    prefill_kv[step] += done
                    taken.append((step, chunk))
                    if need == 0:
                        first_decode = step + 1
                    if not left_in_step:
                        step += 1
                        left_in_step = budget
                if need > 0:  # the prefill continues in the next window
                    plan.append((live, chunks, steps, taken[-1][0], 0))
                    continue
                emitted = 1  # the step that completes the prefill emits the first token
                decode_left -= 1
            tokens = min(decode_left, steps - first_decode)
            if tokens > 0:
                context = live.target + emitted
                count[first_decode] += 1
                count[first_decode + tokens] -= 1
                base[first_decode] += context - first_decode
                base[first_decode + tokens] -= context - first_decode
            else:
                tokens = 0
            plan.append((live, chunks, first_decode, first_decode + tokens - 1, emitted + tokens))
        # Step durations, their end times, and each step's cost per token processed
        # (a call's service is its token share of the steps it took part in).
        ends: list[float] = []
        per_token = [0.0]  # prefix sums of step seconds per token
        active = 0
        active_base = 0
        start = now + swap_s
        t = start
        for i in range(max(p[3] for p in plan) + 1):
            active += count[i]
            active_base += base[i]
            seconds = profile.step_time(
                prefill[i], active, active_base + i * active + prefill_kv[i]
            )
            t += seconds
            ends.append(t)
            per_token.append(per_token[-1] + seconds / (prefill[i] + active or 1))
        end = t
        counters = self.counters
        counters.windows += 1
        counters.steps += len(ends)
        counters.busy_s += end - now
        counters.swap_s += swap_s
        charge = self.scheduler.charge
        kv = self.kv
        token_mode = self._token_mode
        wall_time = self.charge_wall_time
        window_prefill = window_decode = 0
        for live, chunks, first_decode, last_step, emitted in plan:
            spec = live.spec
            prefilled = 0
            seconds = 0.0
            for chunk_step, chunk in chunks:
                prefilled += chunk
                seconds += chunk * (per_token[chunk_step + 1] - per_token[chunk_step])
            if last_step >= first_decode:
                seconds += per_token[last_step + 1] - per_token[first_decode]
            before = live.computed
            computed = before + prefilled
            if emitted:
                live.generated += emitted
                computed = live.target - 1  # the newest token's KV is computed next step
            live.computed = computed
            window_prefill += prefilled
            window_decode += emitted
            live.service += seconds
            first_step = chunks[0][0] if chunks else first_decode
            wall = 0.0
            if last_step >= first_step:
                wall = ends[last_step] - (ends[first_step - 1] if first_step else start)
                live.executing += wall
            if computed > before:
                kv.grow_span(spec.segments, spec.starts, before, computed)
            if token_mode:
                service = float(prefilled + emitted)
            elif wall_time:
                service = wall
            else:
                service = seconds
            if live.generated >= spec.decode_tokens:
                done_at = ends[last_step]
                charge(live.call, service, done_at)
                on_finish(live, done_at)
            else:
                charge(live.call, service, end)
        counters.prefill_tokens += window_prefill
        counters.decode_tokens += window_decode
        kv.evict_to_fit(end)
        return end

    def complete(self, live: LiveCall, now: float) -> None:
        """A call finished: tell the scheduler, offer its context to the retention policy
        (a pin, when the cost model says so), release its KV into the prefix cache."""
        live.finished = now
        self.demand_blocks -= live.max_blocks
        scheduler = self.scheduler
        scheduler.finish(live.call.call_id, now)
        program_id = live.call.program_id
        if self.retention.enabled:
            # The pin covers what the release hands over (keys only this call holds); calls
            # wait on memory only when the last decision ran out of blocks.
            kv = self.kv
            refs, resident = kv.refs, kv.resident
            tokens = sum(resident.get(k, 0) for k, _ in live.spec.segments if refs.get(k) == 1)
            waiting = len(scheduler) - len(scheduler.running) if self.kv_bound else 0
            self.retention.call_finished(
                program_id,
                now,
                blocks=kv.blocks(tokens),
                reload_s=tokens * self.profile.prefill_token_s,
                pressure=Pressure(waiting, self.profile.max_batch_size),
            )
        self.kv.release(live.spec.segments, program_id)
        live.on_gpu = False
        del self.live[live.call.call_id]

    def program_ended(self, program_id: str) -> None:
        """The program's last call is done: no pin of it is worth keeping, nor its host copy."""
        self.retention.program_ended(program_id)
        self._drop_offloaded(program_id)

    # --- pinned contexts in the host pool ---

    def _offload(self, program_id: str, keys: list[object]) -> None:
        """A context is lost: copy its keys to the host pool when there is room (swapped calls
        come first: they take the room back), so its next call swaps them in."""
        kv = self.kv
        held = [(k, kv.resident[k]) for k in cast("list[str]", keys) if k in kv.resident]
        blocks = sum(kv.blocks(t) for _, t in held)
        if not blocks or self.host_used + blocks > self.profile.host_blocks:
            return
        self.offloaded.setdefault(program_id, []).extend(held)
        self.host_used += blocks
        self._offload_s += self.profile.swap_overhead_s + blocks * self.profile.swap_block_s
        self.counters.offloads += 1
        self.counters.swap_blocks += blocks

    def _restore(self, live: LiveCall) -> float:
        """Bring the program's offloaded keys that this call uses back; returns the seconds."""
        held = self.offloaded.pop(live.call.program_id, None)
        if held is None:
            return 0.0
        kv = self.kv
        wanted = {key for key, _ in live.spec.segments}
        copied = 0
        for key, tokens in held:
            self.host_used -= kv.blocks(tokens)
            have = kv.resident.get(key, 0)
            if key in wanted and tokens > have:
                copied += kv.blocks(tokens) - kv.blocks(have)
                kv.grow(key, tokens)
        if not copied:
            return 0.0
        self.counters.restores += 1
        self.counters.swap_blocks += copied
        return self.profile.swap_overhead_s + copied * self.profile.swap_block_s

    def _drop_offloaded(self, program_id: str) -> None:
        for _, tokens in self.offloaded.pop(program_id, ()):
            self.host_used -= self.kv.blocks(tokens)

    def _host_room(self, blocks: int) -> bool:
        """Room for a swapped call in the host pool, dropping offloaded contexts (oldest
        first) to make it."""
        limit = self.profile.host_blocks
        while self.host_used + blocks > limit and self.offloaded:
            self._drop_offloaded(next(iter(self.offloaded)))
        return self.host_used + blocks <= limit
