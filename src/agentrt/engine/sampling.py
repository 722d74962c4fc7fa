"""Turn one step's logits into next tokens, for a whole batch at once.

Each choice of each call owns a :class:`SamplingState` (its parameters, its
own random generator, the tokens it has produced). The :class:`Sampler` takes
the step's ``[num_seqs, vocab]`` logits and the states in row order, and
applies, in this order (vLLM's definitions):

0. logit_bias: each listed token's value added to its logit;
1. penalties: repetition (prompt + output tokens: positive logits divided by
   the penalty, negative ones multiplied), frequency (``count * penalty``
   subtracted, output tokens only) and presence (``penalty`` subtracted once
   per distinct output token);
2. temperature (``0`` means greedy: argmax of the penalised logits);
3. top_k, top_p, min_p truncation;
4. sampling.

Rows are vectorised: all greedy rows take one ``argmax``; all sampled rows
share one softmax and one truncation pass with per-row parameters as tensors.
The only per-row Python work is for rows with penalties (gathering their
token counts) and for seeded rows, which draw their noise from their own
generator so that a seed gives the same tokens whatever else is in the batch.

Logprobs are those of the *raw* model distribution (``log_softmax`` of the
logits before logit_bias, penalties, temperature and truncation), as vLLM reports by
default and as OpenAI's are independent of ``temperature``.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch

from agentrt.protocol.engine import InvalidRequest, SamplingParams
from agentrt.protocol.limits import sampling_violation

# Below this temperature a row is treated as greedy (dividing by it would overflow).
GREEDY_TEMPERATURE = 1e-5


def validate_sampling_params(params: SamplingParams, vocab_size: int | None = None) -> None:
    """Raise :class:`InvalidRequest` (naming the field) for values no sampler can honour."""
    violation = sampling_violation(params)
    if violation is not None:
        raise InvalidRequest(violation.message, param=violation.param)
    if params.top_logprobs and not params.logprobs:
        raise InvalidRequest("top_logprobs requires logprobs=true", param="top_logprobs")
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in params.stop_token_ids):
        raise InvalidRequest(
            "stop_token_ids must be token ids of the model", param="stop_token_ids"
        )
    if vocab_size is not None and any(not 0 <= t < vocab_size for t in params.logit_bias):
        raise InvalidRequest("logit_bias keys must be token ids of the model", param="logit_bias")


class SamplingState:
    """The sampling side of one choice: parameters, generator, and the tokens it has seen.

    ``seed`` seeds a private :class:`torch.Generator` with ``seed + choice_index``
    (so the ``n`` choices of a seeded request differ from each other but each
    is reproducible). Unseeded choices use the sampler's shared generator.
    The engine calls :meth:`append` with every token it accepts for the
    choice; the state survives preemption (swap or recompute) unchanged, so
    a resumed choice continues the same random stream.
    """

    __slots__ = (
        "bias",
        "choice_index",
        "eos_token_ids",
        "generator",
        "output_counts",
        "output_token_ids",
        "params",
        "prompt_token_set",
    )

    def __init__(
        self,
        params: SamplingParams,
        *,
        prompt_token_ids: Sequence[int] = (),
        choice_index: int = 0,
        eos_token_ids: Iterable[int] = (),
        device: torch.device | str = "cpu",
    ) -> None:
        self.params = params
        self.choice_index = choice_index
        self.eos_token_ids = frozenset(eos_token_ids)
        self.output_token_ids: list[int] = []
        self.output_counts: Counter[int] = Counter()
        # Only the repetition penalty looks at the prompt; keep the set only then.
        self.prompt_token_set: frozenset[int] = (
            frozenset(prompt_token_ids) if params.repetition_penalty != 1.0 else frozenset()
        )
        # logit_bias as (token ids, values) tensors, built once for the choice's every step.
        self.bias: tuple[torch.Tensor, torch.Tensor] | None = None
        if params.logit_bias:
            self.bias = (
                torch.tensor(list(params.logit_bias), dtype=torch.long, device=device),
                torch.tensor(list(params.logit_bias.values()), device=device),
            )
        self.generator: torch.Generator | None = None
        if params.seed is not None:
            self.generator = torch.Generator(device=device)
            self.generator.manual_seed((params.seed + choice_index) % (2**63))

    @property
    def greedy(self) -> bool:
        return self.params.temperature < GREEDY_TEMPERATURE

    @property
    def has_penalties(self) -> bool:
        p = self.params
        return (
            p.repetition_penalty != 1.0 or p.presence_penalty != 0.0 or p.frequency_penalty != 0.0
        )

    @property
    def needs_truncation(self) -> bool:
        p = self.params
        return p.top_k > 0 or p.top_p < 1.0 or p.min_p > 0.0

    def append(self, token_id: int) -> None:
        """Record a token the engine accepted for this choice (feeds the penalties)."""
        self.output_token_ids.append(token_id)
        self.output_counts[token_id] += 1

    def is_stop_token(self, token_id: int) -> bool:
        """Whether ``token_id`` ends this choice: an EOS id (unless ``ignore_eos``) or a stop token id.

        The stop token is kept in ``token_ids`` and hidden from the text when
        it is special. OpenAI's ``stop_reason`` is ``token_id`` when it came
        from ``stop_token_ids`` and ``None`` for EOS (see :meth:`stop_reason`).
        """
        if token_id in self.params.stop_token_ids:
            return True
        return not self.params.ignore_eos and token_id in self.eos_token_ids

    def stop_reason(self, token_id: int) -> int | None:
        """The ``stop_reason`` to report for a stop token (``None`` for a plain EOS)."""
        return token_id if token_id in self.params.stop_token_ids else None


class SampledLogprobs(NamedTuple):
    """The chosen token's logprob and the ``top_logprobs`` best alternatives (id, logprob)."""

    logprob: float
    top: list[tuple[int, float]]


class SamplerOutput(NamedTuple):
    """One token per row, and per row its logprobs when the row's params ask for them."""

    token_ids: list[int]
    logprobs: list[SampledLogprobs | None]


class Sampler:
    """Samples the next token of every row of a logits batch; stateless apart from its generator."""

    def __init__(self, generator: torch.Generator | None = None) -> None:
        # Shared noise for unseeded rows; private so tests can seed it.
        self.generator = generator

    def __call__(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> SamplerOutput:
        """Sample one token per row of ``logits`` ([len(states), vocab], any float dtype)."""
        if logits.dim() != 2 or logits.shape[0] != len(states):
            raise ValueError(f"logits {tuple(logits.shape)} do not match {len(states)} states")
        logits = logits.float()
        raw = logits
        biased = [(i, s.bias) for i, s in enumerate(states) if s.bias is not None]
        penalised = [i for i, s in enumerate(states) if s.has_penalties]
        if biased or penalised:
            logits = logits.clone()
        for i, (bias_ids, bias_values) in biased:
            logits[i, bias_ids] += bias_values
        if penalised:
            apply_penalties(logits, penalised, states)

        token_ids = torch.empty(len(states), dtype=torch.long, device=logits.device)
        greedy = [i for i, s in enumerate(states) if s.greedy]
        sampled = [i for i, s in enumerate(states) if not s.greedy]
        if greedy:
            if len(greedy) == len(states):
                token_ids = logits.argmax(dim=-1)
            else:
                idx = torch.tensor(greedy, device=logits.device)
                token_ids[idx] = logits[idx].argmax(dim=-1)
        if sampled:
            idx = torch.tensor(sampled, device=logits.device)
            rows = logits if len(sampled) == len(states) else logits[idx]
            sub_states = [states[i] for i in sampled]
            token_ids[idx] = self._sample(rows, sub_states)

        ids = token_ids.tolist()
        return SamplerOutput(ids, compute_logprobs(raw, ids, states))

    def _sample(self, logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
        temps = torch.tensor([s.params.temperature for s in states], device=logits.device)
        logits = logits / temps.unsqueeze(1)
        truncate = [i for i, s in enumerate(states) if s.needs_truncation]
        if truncate:
            if len(truncate) == len(states):
                logits = truncate_logits(logits, states)
            else:
                idx = torch.tensor(truncate, device=logits.device)
                logits[idx] = truncate_logits(logits[idx], [states[i] for i in truncate])
        probs = torch.softmax(logits, dim=-1)
        return sample_from_probs(probs, states, self.generator)


def apply_penalties(
    logits: torch.Tensor, rows: Sequence[int], states: Sequence[SamplingState]
) -> None:
    """Apply repetition, frequency and presence penalties in place to ``logits[rows]``."""
    device = logits.device
    for row in rows:
        state = states[row]
        p = state.params
        counts = state.output_counts
        if p.repetition_penalty != 1.0:
            seen = state.prompt_token_set.union(counts)
            if seen:
                idx = torch.tensor(sorted(seen), device=device)
                vals = logits[row, idx]
                logits[row, idx] = torch.where(
                    vals > 0, vals / p.repetition_penalty, vals * p.repetition_penalty
                )
        if counts and (p.frequency_penalty != 0.0 or p.presence_penalty != 0.0):
            idx = torch.tensor(list(counts.keys()), device=device)
            freq = torch.tensor(list(counts.values()), dtype=logits.dtype, device=device)
            logits[row, idx] -= p.frequency_penalty * freq + p.presence_penalty


def truncate_logits(logits: torch.Tensor, states: Sequence[SamplingState]) -> torch.Tensor:
    """Mask (to -inf) what top_k, top_p and min_p exclude; per-row parameters, one sort for all rows.

    top_p keeps the smallest set of most likely tokens whose probability
    reaches ``top_p`` (the token that crosses it is kept); ties at the top_k
    boundary are kept, as with a threshold on the k-th largest logit.
    """
    device = logits.device
    vocab = logits.shape[-1]
    sorted_logits, order = logits.sort(dim=-1, descending=True)
    positions = torch.arange(vocab, device=device).unsqueeze(0)
    top_k = torch.tensor(
        [s.params.top_k if s.params.top_k > 0 else vocab for s in states], device=device
    ).clamp(max=vocab)
    # top_k: keep logits >= the k-th largest (ties kept).
    kth = sorted_logits.gather(1, (top_k - 1).unsqueeze(1))
    remove_sorted = sorted_logits < kth
    sorted_logits = sorted_logits.masked_fill(remove_sorted, float("-inf"))
    probs = torch.softmax(sorted_logits, dim=-1)
    top_p = torch.tensor([s.params.top_p for s in states], device=device).unsqueeze(1)
    if bool((top_p < 1.0).any()):
        # Exclusive cumsum: a token is dropped when the mass before it already reaches top_p.
        mass_before = probs.cumsum(dim=-1) - probs
        remove_sorted = remove_sorted | ((mass_before >= top_p) & (positions > 0))
    min_p = torch.tensor([s.params.min_p for s in states], device=device).unsqueeze(1)
    if bool((min_p > 0.0).any()):
        # min_p is relative to the most likely token, so truncation order does not change it.
        remove_sorted = remove_sorted | (probs < min_p * probs[:, :1])
    remove = torch.zeros_like(remove_sorted).scatter(1, order, remove_sorted)
    return logits.masked_fill(remove, float("-inf"))


def sample_from_probs(
    probs: torch.Tensor, states: Sequence[SamplingState], shared: torch.Generator | None
) -> torch.Tensor:
    """Draw one token per row by the exponential race (argmax of ``p / Exp(1)``).

    Equivalent to sampling from ``probs`` and vectorised; seeded rows draw
    their noise from their own generator, one vocab-sized draw per step, so
    their tokens depend on nothing but their seed and their own history.
    """
    noise = torch.empty_like(probs)
    unseeded = [i for i, s in enumerate(states) if s.generator is None]
    if len(unseeded) == len(states):
        noise.exponential_(generator=shared)
    else:
        if unseeded:
            idx = torch.tensor(unseeded, device=probs.device)
            noise[idx] = torch.empty_like(probs[idx]).exponential_(generator=shared)
        for i, s in enumerate(states):
            if s.generator is not None:
                noise[i].exponential_(generator=s.generator)
    return (probs / noise).argmax(dim=-1)


def compute_logprobs(
    raw_logits: torch.Tensor, token_ids: Sequence[int], states: Sequence[SamplingState]
) -> list[SampledLogprobs | None]:
    """Logprobs of the chosen tokens and top alternatives under the raw model distribution."""
    out: list[SampledLogprobs | None] = [None] * len(states)
    rows = [i for i, s in enumerate(states) if s.params.logprobs]
    if not rows:
        return out
    idx = torch.tensor(rows, device=raw_logits.device)
    logprobs = torch.log_softmax(raw_logits[idx], dim=-1)
    chosen = logprobs.gather(1, torch.tensor([[token_ids[i]] for i in rows], device=idx.device))
    k = max(states[i].params.top_logprobs for i in rows)
    top_vals, top_ids = logprobs.topk(k, dim=-1) if k else (logprobs[:, :0], logprobs[:, :0].long())
    chosen_list = chosen.squeeze(1).tolist()
    top_vals_list, top_ids_list = top_vals.tolist(), top_ids.tolist()
    for j, row in enumerate(rows):
        n = states[row].params.top_logprobs
        top = list(zip(top_ids_list[j][:n], top_vals_list[j][:n], strict=True))
        out[row] = SampledLogprobs(chosen_list[j], top)
    return out
