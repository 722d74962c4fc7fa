"""The engine's output side: sampled tokens in, token events out.

For each token the sampler picks for a choice, :class:`OutputProcessor`
accepts it into the choice's :class:`~agentrt.engine.sequence.Sequence`,
checks the stop conditions (a stop token, a stop string, ``max_tokens``, the
context limit), releases the text the token completes through the choice's
detokenizer and reports its logprobs. When the last choice of a call ends,
it sums the call's usage and timings over its choices. Scheduling and KV
stay with the engine: it frees what a finished choice holds.
"""

from __future__ import annotations

from typing import Any

from agentrt.engine.detokenizer import IncrementalDetokenizer, token_text
from agentrt.engine.sampling import SampledLogprobs
from agentrt.engine.sequence import Request, Sequence
from agentrt.protocol.engine import (
    FinishReason,
    SamplingParams,
    Timings,
    TokenEvent,
    TokenLogprob,
    TopLogprob,
    Usage,
)


class OutputProcessor:
    """Token acceptance, stop checks, text, logprobs and usage for one engine's calls.

    ``tokenizer`` is None for an engine without one: events then carry token
    ids only, and stop strings are refused at intake.
    """

    def __init__(self, tokenizer: Any, max_model_len: int) -> None:
        self.tokenizer = tokenizer
        self.max_model_len = max_model_len

    def detokenizer(
        self, sampling: SamplingParams, prompt_token_ids: list[int]
    ) -> IncrementalDetokenizer | None:
        """A new choice's detokenizer (None without a tokenizer)."""
        if self.tokenizer is None:
            return None
        return IncrementalDetokenizer(
            self.tokenizer, prompt_token_ids=prompt_token_ids, stop=sampling.stop
        )

    def accept(
        self, seq: Sequence, token: int, lp: SampledLogprobs | None, now: float
    ) -> TokenEvent:
        """Append ``token`` to ``seq`` and return its event.

        When the token ends the choice, the event and the sequence carry the
        finish and stop reasons and ``seq.timings.finished`` is set; the
        caller then frees what the sequence holds.
        """
        seq.token_ids.append(token)
        state = seq.state
        state.append(token)
        if seq.timings.first_token is None:
            seq.timings.first_token = now
        detok = seq.detokenizer
        text = ""
        finish: FinishReason | None = None
        stop_reason: str | int | None = None
        if state.is_stop_token(token):
            # The stop token's own text is not part of the output (as in vLLM).
            finish, stop_reason = "stop", state.stop_reason(token)
        elif detok is not None:
            delta = detok.add([token])
            text = delta.text
            if delta.stop is not None:
                finish, stop_reason = "stop", delta.stop
        if finish is None and (
            seq.num_output_tokens >= seq.max_tokens or seq.num_tokens >= self.max_model_len
        ):
            finish = "length"
        if finish is not None and detok is not None and not detok.finished:
            tail = detok.flush()
            text += tail.text
            if tail.stop is not None:  # a stop string completed by the held-back UTF-8 tail
                finish, stop_reason = "stop", tail.stop
        if finish is not None:
            seq.finish_reason = finish
            seq.stop_reason = stop_reason
            seq.timings.finished = now
        return TokenEvent(
            call_id=seq.request_id,
            index=seq.index,
            token_ids=[token],
            text=text,
            logprobs=[self.logprob(token, lp)] if lp is not None else None,
            finish_reason=finish,
            stop_reason=stop_reason,
        )

    def logprob(self, token: int, lp: SampledLogprobs) -> TokenLogprob:
        return TokenLogprob(
            token_id=token,
            token=self._text(token),
            logprob=lp.logprob,
            top=[TopLogprob(token_id=t, token=self._text(t), logprob=v) for t, v in lp.top],
        )

    def _text(self, token: int) -> str:
        return token_text(self.tokenizer, token) if self.tokenizer is not None else ""

    @staticmethod
    def close(event: TokenEvent, request: Request, now: float) -> None:
        """The call's last choice ended with ``event``: attach the call's usage and timings."""
        seqs = request.seqs
        event.usage = Usage(
            prompt_tokens=request.prompt_tokens,
            completion_tokens=sum(s.num_output_tokens for s in seqs),
            cached_tokens=max(s.num_cached_tokens for s in seqs),
        )
        event.timings = Timings(
            arrival=min(s.timings.arrival for s in seqs),
            first_scheduled=min(
                (s.timings.first_scheduled for s in seqs if s.timings.first_scheduled is not None),
                default=None,
            ),
            first_token=min(
                (s.timings.first_token for s in seqs if s.timings.first_token is not None),
                default=None,
            ),
            finished=now,
            queue_time=max(s.timings.queue_time for s in seqs),
            model_time=sum(s.timings.model_time for s in seqs),
            preemptions=sum(s.timings.preemptions for s in seqs),
            kv_retained_s=max(
                (s.timings.kv_retained_s for s in seqs if s.timings.kv_retained_s is not None),
                default=None,
            ),
        )
