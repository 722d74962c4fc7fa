"""Score a text with an idle engine's model: the logits at every position, fed in chunks.

Used to measure what a lossy setting (a dtype, quantized weights) costs in
quality: perplexity of a fixed text and next-token agreement with a
reference model. The text is fed ``chunk`` tokens at a time through the
engine's own KV pool, as chunked prefill is; with quantized weights a chunk
is no longer than :func:`~agentrt.engine.matmul.max_quantized_rows`, so it
runs the same kernels a small decode step runs.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import torch

from agentrt.engine.matmul import max_quantized_rows
from agentrt.engine.model_runner import ScheduledSeq
from agentrt.engine.sampling import SamplingState
from agentrt.engine.sequence import Sequence
from agentrt.protocol.engine import SamplingParams
from agentrt.scheduling.call import Call

if TYPE_CHECKING:
    from agentrt.engine.llm_engine import LLMEngine


def token_logits(engine: LLMEngine, tokens: list[int], chunk: int | None = None) -> torch.Tensor:
    """float32 ``[len(tokens), vocab]``: row ``i`` predicts token ``i + 1``.

    The engine must have nothing running (the blocks are taken from its pool
    and given back before returning).
    """
    if engine.has_unfinished_requests():
        raise RuntimeError("score texts only on an idle engine")
    if not tokens:
        raise ValueError("nothing to score")
    if chunk is None:
        quantization = engine.config.quantization
        chunk = (
            64 if quantization == "none" else max_quantized_rows(quantization, engine.runner.dtype)
        )
    seq = Sequence(
        seq_id="score",
        request_id="score",
        index=0,
        token_ids=list(tokens),
        num_prompt_tokens=len(tokens),
        state=SamplingState(SamplingParams()),
        max_tokens=1,
        arrival=0.0,
        call=Call("score", "score"),
    )
    bm = engine.block_manager
    rows: list[torch.Tensor] = []
    try:
        while seq.num_computed_tokens < len(tokens):
            n = min(chunk, len(tokens) - seq.num_computed_tokens)
            bm.allocate(seq, seq.num_computed_tokens + n)
            rows.append(engine.runner.execute([ScheduledSeq(seq, n)], every_token=True))
            seq.num_computed_tokens += n
    finally:
        bm.free(seq)
    return torch.cat(rows)


def perplexity(logits: torch.Tensor, tokens: list[int]) -> float:
    """exp of the mean negative log-likelihood of ``tokens[1:]`` under ``logits[:-1]``."""
    targets = torch.tensor(tokens[1:], dtype=torch.long)
    nll = torch.nn.functional.cross_entropy(logits[:-1].float(), targets)
    return math.exp(float(nll))
