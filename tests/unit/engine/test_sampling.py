"""The sampler: greedy, seeded reproducibility, truncation masks, penalties, logprobs."""

from __future__ import annotations

import math

import pytest
import torch

from agentrt.engine.sampling import (
    Sampler,
    SamplingState,
    apply_penalties,
    truncate_logits,
    validate_sampling_params,
)
from agentrt.protocol.engine import InvalidRequest, SamplingParams

VOCAB = 64


def state(**kw: object) -> SamplingState:
    prompt = kw.pop("prompt", ())
    choice = kw.pop("choice", 0)
    eos = kw.pop("eos", ())
    return SamplingState(
        SamplingParams(**kw),  # type: ignore[arg-type]
        prompt_token_ids=prompt,  # type: ignore[arg-type]
        choice_index=choice,  # type: ignore[arg-type]
        eos_token_ids=eos,  # type: ignore[arg-type]
    )


def logits_from_probs(probs: list[float]) -> torch.Tensor:
    return torch.tensor([probs]).log()


def kept(masked: torch.Tensor) -> list[int]:
    return torch.isfinite(masked[0]).nonzero().flatten().tolist()


def test_greedy_rows_take_the_argmax_whatever_else_is_in_the_batch() -> None:
    logits = torch.randn(5, VOCAB, generator=torch.Generator().manual_seed(0))
    states = [
        state(temperature=0.0),
        state(temperature=1.0),
        state(temperature=0.0),
        state(temperature=0.7, top_p=0.5),
        state(temperature=0.0),
    ]
    out = Sampler()(logits, states)
    argmax = logits.argmax(dim=-1).tolist()
    assert [out.token_ids[i] for i in (0, 2, 4)] == [argmax[i] for i in (0, 2, 4)]


def test_all_greedy_batch_equals_argmax() -> None:
    logits = torch.randn(32, VOCAB, generator=torch.Generator().manual_seed(1))
    out = Sampler()(logits, [state(temperature=0.0) for _ in range(32)])
    assert out.token_ids == logits.argmax(dim=-1).tolist()
    assert out.logprobs == [None] * 32


def test_greedy_accepts_half_precision_logits() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(2)).to(torch.bfloat16)
    out = Sampler()(logits, [state(temperature=0.0) for _ in range(3)])
    assert out.token_ids == logits.float().argmax(dim=-1).tolist()


def run_seeded(row_logits: list[torch.Tensor], batch_mates: int, mate_seed: int) -> list[int]:
    """Sample a seeded choice over several steps inside a batch of unseeded/other-seeded mates."""
    sampler = Sampler(torch.Generator().manual_seed(mate_seed))
    mine = state(temperature=1.0, seed=1234)
    mates = [
        state(temperature=0.9, seed=mate_seed + i) if i % 2 else state() for i in range(batch_mates)
    ]
    tokens = []
    noise = torch.Generator().manual_seed(mate_seed)
    for step_logits in row_logits:
        others = torch.randn(batch_mates, VOCAB, generator=noise)
        position = mate_seed % (batch_mates + 1)
        batch = torch.cat([others[:position], step_logits.unsqueeze(0), others[position:]])
        states = [*mates[:position], mine, *mates[position:]]
        out = sampler(batch, states)
        tokens.append(out.token_ids[position])
        for s, t in zip(states, out.token_ids, strict=True):
            s.append(t)
    return tokens


def test_seeded_sampling_is_reproducible_and_independent_of_batch_mates() -> None:
    steps = [
        torch.randn(VOCAB, generator=torch.Generator().manual_seed(100 + i)) for i in range(20)
    ]
    alone = run_seeded(steps, batch_mates=0, mate_seed=0)
    assert run_seeded(steps, batch_mates=0, mate_seed=0) == alone
    assert run_seeded(steps, batch_mates=3, mate_seed=7) == alone
    assert run_seeded(steps, batch_mates=8, mate_seed=11) == alone


def test_choices_of_one_seeded_request_differ_from_each_other() -> None:
    logits = torch.zeros(2, VOCAB)  # uniform: any difference comes from the noise
    draws: list[list[int]] = [[], []]
    states = [state(seed=5, choice=0), state(seed=5, choice=1)]
    for _ in range(10):
        out = Sampler()(logits, states)
        draws[0].append(out.token_ids[0])
        draws[1].append(out.token_ids[1])
    assert draws[0] != draws[1]


def test_sampling_follows_the_distribution() -> None:
    probs = [0.5, 0.3, 0.15, 0.05]
    logits = logits_from_probs(probs).repeat(4000, 1)
    out = Sampler(torch.Generator().manual_seed(3))(logits, [state() for _ in range(4000)])
    counts = torch.bincount(torch.tensor(out.token_ids), minlength=4).tolist()
    for count, p in zip(counts, probs, strict=True):
        sd = math.sqrt(4000 * p * (1 - p))
        assert abs(count - 4000 * p) < 5 * sd


def test_temperature_sharpens_the_distribution() -> None:
    logits = logits_from_probs([0.6, 0.4]).repeat(2000, 1)
    hot = Sampler(torch.Generator().manual_seed(4))(
        logits, [state(temperature=2.0) for _ in range(2000)]
    )
    cold = Sampler(torch.Generator().manual_seed(4))(
        logits, [state(temperature=0.2) for _ in range(2000)]
    )
    assert cold.token_ids.count(0) > hot.token_ids.count(0)


def test_top_k_keeps_the_k_most_likely_tokens() -> None:
    logits = logits_from_probs([0.1, 0.4, 0.05, 0.3, 0.15])
    assert kept(truncate_logits(logits, [state(top_k=2)])) == [1, 3]
    assert kept(truncate_logits(logits, [state(top_k=1)])) == [1]
    assert kept(truncate_logits(logits, [state(top_k=50)])) == [0, 1, 2, 3, 4]


def test_top_p_keeps_the_smallest_set_reaching_p() -> None:
    logits = logits_from_probs([0.05, 0.5, 0.15, 0.3])
    assert kept(truncate_logits(logits, [state(top_p=0.5)])) == [1]
    assert kept(truncate_logits(logits, [state(top_p=0.79)])) == [1, 3]
    assert kept(truncate_logits(logits, [state(top_p=0.81)])) == [1, 2, 3]
    assert kept(truncate_logits(logits, [state(top_p=0.01)])) == [1]  # never empty


def test_min_p_drops_tokens_below_a_fraction_of_the_best() -> None:
    logits = logits_from_probs([0.05, 0.5, 0.15, 0.3])
    assert kept(truncate_logits(logits, [state(min_p=0.2)])) == [1, 2, 3]
    assert kept(truncate_logits(logits, [state(min_p=0.5)])) == [1, 3]


def test_truncation_parameters_apply_per_row() -> None:
    logits = logits_from_probs([0.05, 0.5, 0.15, 0.3]).repeat(3, 1)
    masked = truncate_logits(logits, [state(top_k=1), state(top_p=0.79), state(min_p=0.2)])
    assert [torch.isfinite(row).nonzero().flatten().tolist() for row in masked] == [
        [1],
        [1, 3],
        [1, 2, 3],
    ]


def test_truncated_tokens_are_never_sampled() -> None:
    logits = logits_from_probs([0.3, 0.3, 0.2, 0.2]).repeat(500, 1)
    out = Sampler(torch.Generator().manual_seed(5))(
        logits, [state(top_k=2) if i % 2 else state(top_p=0.55) for i in range(500)]
    )
    assert set(out.token_ids) == {0, 1}


def test_penalties_match_their_definitions() -> None:
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0, -2.0, 1.0]])
    s = state(
        temperature=1.0,
        repetition_penalty=2.0,
        frequency_penalty=0.5,
        presence_penalty=0.25,
        prompt=[0, 1],
    )
    for t in (3, 3, 4):
        s.append(t)
    penalised = logits.clone()
    apply_penalties(penalised, [0], [s])
    expected = [
        2.0 / 2.0,  # prompt token, positive: divided
        -1.0 * 2.0,  # prompt token, negative: multiplied
        0.5,  # never seen
        3.0 / 2.0 - 0.5 * 2 - 0.25,  # output twice: repetition, then frequency x2 and presence once
        -2.0 * 2.0 - 0.5 * 1 - 0.25,
        1.0,
    ]
    assert penalised[0].tolist() == pytest.approx(expected)


def test_presence_and_frequency_penalties_ignore_the_prompt() -> None:
    logits = torch.tensor([[1.0, 1.0, 1.0]])
    s = state(frequency_penalty=1.0, presence_penalty=1.0, prompt=[0, 1, 2])
    apply_penalties(logits, [0], [s])
    assert logits[0].tolist() == [1.0, 1.0, 1.0]


def test_penalties_change_the_greedy_choice() -> None:
    logits = torch.tensor([[5.0, 4.0, 0.0]])
    s = state(temperature=0.0, frequency_penalty=2.0)
    s.append(0)
    assert Sampler()(logits, [s]).token_ids == [1]
    assert Sampler()(logits, [state(temperature=0.0)]).token_ids == [0]


def test_logit_bias_bans_or_forces_tokens_in_its_own_row_only() -> None:
    logits = torch.randn(3, VOCAB, generator=torch.Generator().manual_seed(7))
    best = logits.argmax(dim=-1).tolist()
    banned = state(temperature=0.0, logit_bias={best[0]: -100.0})
    forced = state(temperature=1.0, seed=3, logit_bias={5: 100.0})
    plain = state(temperature=0.0)
    out = Sampler()(logits, [banned, forced, plain])
    second = logits[0].topk(2).indices.tolist()[1]
    assert out.token_ids == [second, 5, best[2]]
    for _ in range(20):  # +100 outweighs any other logit of a sampled row
        assert Sampler()(logits[1:2], [forced]).token_ids == [5]


def test_logit_bias_leaves_logprobs_raw() -> None:
    logits = torch.randn(1, VOCAB, generator=torch.Generator().manual_seed(8))
    out = Sampler()(logits, [state(temperature=0.0, logprobs=True, logit_bias={9: 100.0})])
    assert out.token_ids == [9]
    lp = out.logprobs[0]
    assert lp is not None
    assert lp.logprob == pytest.approx(torch.log_softmax(logits, -1)[0, 9].item(), abs=1e-5)


def test_logprobs_are_normalised_raw_model_logprobs() -> None:
    logits = torch.randn(2, VOCAB, generator=torch.Generator().manual_seed(6))
    states = [
        state(temperature=0.3, logprobs=True, top_logprobs=5, seed=1),
        state(temperature=0.0, logprobs=True),
    ]
    out = Sampler()(logits, states)
    reference = torch.log_softmax(logits, dim=-1)
    for row, lp in enumerate(out.logprobs):
        assert lp is not None
        assert lp.logprob == pytest.approx(reference[row, out.token_ids[row]].item(), abs=1e-5)
    first = out.logprobs[0]
    assert first is not None and len(first.top) == 5
    values = [v for _, v in first.top]
    assert values == sorted(values, reverse=True)
    assert [t for t, _ in first.top] == reference[0].topk(5).indices.tolist()
    assert out.logprobs[1] is not None and out.logprobs[1].top == []
    assert math.fsum(math.exp(v) for v in reference[0].tolist()) == pytest.approx(1.0)


def test_only_rows_that_ask_get_logprobs() -> None:
    logits = torch.randn(3, VOCAB)
    out = Sampler()(logits, [state(), state(logprobs=True, top_logprobs=2), state(temperature=0.0)])
    assert out.logprobs[0] is None and out.logprobs[2] is None
    assert out.logprobs[1] is not None and len(out.logprobs[1].top) == 2


def test_stop_tokens_respect_ignore_eos() -> None:
    s = state(eos=[2], stop_token_ids=[7])
    assert s.is_stop_token(2) and s.stop_reason(2) is None
    assert s.is_stop_token(7) and s.stop_reason(7) == 7
    assert not s.is_stop_token(3)
    ignoring = state(eos=[2], stop_token_ids=[7], ignore_eos=True)
    assert not ignoring.is_stop_token(2)
    assert ignoring.is_stop_token(7)


def test_mismatched_logits_and_states_are_rejected() -> None:
    with pytest.raises(ValueError, match="do not match"):
        Sampler()(torch.zeros(2, VOCAB), [state()])


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("temperature", -0.1),
        ("top_p", 0.0),
        ("top_p", 1.5),
        ("top_k", 0),
        ("top_k", -2),
        ("min_p", 1.5),
        ("presence_penalty", 3.0),
        ("frequency_penalty", -3.0),
        ("repetition_penalty", 0.0),
        ("n", 0),
        ("max_tokens", 0),
        ("top_logprobs", 21),
        ("stop_token_ids", [VOCAB]),
        ("logit_bias", {VOCAB: 1.0}),
        ("logit_bias", {-1: 1.0}),
        ("logit_bias", {3: 100.5}),
        ("logit_bias", {3: float("nan")}),
    ],
)
def test_invalid_sampling_params_name_the_field(field: str, value: object) -> None:
    extra: dict[str, object] = {"logprobs": True} if field == "top_logprobs" else {}
    params = SamplingParams(**{field: value, **extra})  # type: ignore[arg-type]
    with pytest.raises(InvalidRequest) as err:
        validate_sampling_params(params, vocab_size=VOCAB)
    assert err.value.param == field


def test_top_logprobs_without_logprobs_is_rejected() -> None:
    with pytest.raises(InvalidRequest, match="logprobs"):
        validate_sampling_params(SamplingParams(top_logprobs=2))


def test_default_params_are_valid() -> None:
    validate_sampling_params(SamplingParams(), vocab_size=VOCAB)
