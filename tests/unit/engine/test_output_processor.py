"""OutputProcessor: a sampled token becomes an event; stop checks, text, logprobs, usage."""

from __future__ import annotations

from collections.abc import Sequence as Seq

from agentrt.engine.output_processor import OutputProcessor
from agentrt.engine.sampling import SampledLogprobs, SamplingState
from agentrt.engine.sequence import Request, Sequence
from agentrt.protocol.engine import SamplingParams, Timings
from agentrt.scheduling.call import Call


class LetterTokenizer:
    """Token i is the i-th lower-case letter."""

    def decode(self, ids: Seq[int], **_: object) -> str:
        return "".join(chr(ord("a") + i) for i in ids)


def choice(
    output: OutputProcessor,
    sampling: SamplingParams,
    *,
    index: int = 0,
    prompt: Seq[int] = (0, 1),
    max_tokens: int = 8,
    eos: Seq[int] = (),
) -> Sequence:
    return Sequence(
        seq_id=f"c#{index}",
        request_id="c",
        index=index,
        token_ids=list(prompt),
        num_prompt_tokens=len(prompt),
        state=SamplingState(sampling, choice_index=index, eos_token_ids=eos),
        detokenizer=output.detokenizer(sampling, list(prompt)),
        max_tokens=max_tokens,
        arrival=1.0,
        call=Call(f"c#{index}", "p"),
        timings=Timings(arrival=1.0),
    )


def test_tokens_release_text_until_a_stop_string_ends_the_choice() -> None:
    output = OutputProcessor(LetterTokenizer(), max_model_len=100)
    seq = choice(output, SamplingParams(stop=["de"]))
    first = output.accept(seq, 2, None, now=2.0)
    assert (first.text, first.finish_reason) == ("c", None)
    assert seq.timings.first_token == 2.0
    held = output.accept(seq, 3, None, now=3.0)
    assert held.text == ""  # "d" may start the stop string
    last = output.accept(seq, 4, None, now=4.0)
    assert (last.text, last.finish_reason, last.stop_reason) == ("", "stop", "de")
    assert seq.finish_reason == "stop" and seq.timings.finished == 4.0
    assert seq.output_token_ids == [2, 3, 4] and seq.state.output_token_ids == [2, 3, 4]


def test_a_stop_token_ends_the_choice_without_its_text() -> None:
    output = OutputProcessor(LetterTokenizer(), max_model_len=100)
    seq = choice(output, SamplingParams(), eos=[25])
    event = output.accept(seq, 25, None, now=2.0)
    assert (event.text, event.finish_reason, event.stop_reason) == ("", "stop", None)
    seq = choice(output, SamplingParams(stop_token_ids=[7]))
    event = output.accept(seq, 7, None, now=2.0)
    assert (event.finish_reason, event.stop_reason) == ("stop", 7)


def test_max_tokens_and_the_context_limit_end_a_choice_with_length() -> None:
    output = OutputProcessor(None, max_model_len=4)
    seq = choice(output, SamplingParams(), max_tokens=1)
    event = output.accept(seq, 5, None, now=2.0)
    assert (event.token_ids, event.text, event.finish_reason) == ([5], "", "length")
    seq = choice(output, SamplingParams(), max_tokens=10)
    assert output.accept(seq, 5, None, now=2.0).finish_reason is None
    assert output.accept(seq, 6, None, now=3.0).finish_reason == "length"  # 4 tokens


def test_logprobs_carry_each_token_text() -> None:
    output = OutputProcessor(LetterTokenizer(), max_model_len=100)
    seq = choice(output, SamplingParams(logprobs=True, top_logprobs=1))
    event = output.accept(seq, 1, SampledLogprobs(-0.5, [(2, -0.7)]), now=2.0)
    assert event.logprobs is not None
    (lp,) = event.logprobs
    assert (lp.token_id, lp.token, lp.logprob) == (1, "b", -0.5)
    assert [(t.token_id, t.token, t.logprob) for t in lp.top] == [(2, "c", -0.7)]


def test_closing_a_call_sums_usage_and_timings_over_its_choices() -> None:
    output = OutputProcessor(None, max_model_len=100)
    seqs = [choice(output, SamplingParams(n=2), index=i) for i in range(2)]
    seqs[0].num_cached_tokens, seqs[1].num_cached_tokens = 0, 1
    for i, seq in enumerate(seqs):
        seq.timings.first_scheduled = 1.5 + i
        seq.timings.queue_time = 0.5 + i
        seq.timings.model_time = 0.25
        seq.timings.preemptions = i
    output.accept(seqs[0], 3, None, now=2.0)
    output.accept(seqs[1], 3, None, now=3.0)
    event = output.accept(seqs[1], 4, None, now=4.0)
    OutputProcessor.close(event, Request("c", seqs, prompt_tokens=2), now=4.0)
    assert event.usage is not None and event.timings is not None
    assert (event.usage.prompt_tokens, event.usage.completion_tokens) == (2, 3)
    assert event.usage.cached_tokens == 1
    t = event.timings
    assert (t.arrival, t.first_scheduled, t.first_token, t.finished) == (1.0, 1.5, 2.0, 4.0)
    assert (t.queue_time, t.model_time, t.preemptions) == (1.5, 0.5, 1)
