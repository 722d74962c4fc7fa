"""Fitting a profile's step-time terms to an engine benchmark's step records.

``agentrt bench engine --json BENCH.json`` writes one record per engine step::

    {"steps": [{"prefill_tokens": int, "decode_seqs": int, "kv_tokens": int,
                "seconds": float}, ...], ...}

and may add an ``"engine"`` object whose keys name :class:`EngineProfile`
capacity fields (``kv_blocks``, ``block_size``, ``max_batch_size``, ...) and
a ``"swap"`` object (``blocks``, ``batched_seconds`` for one swap-out plus
swap-in), from which the per-block swap cost is taken.
The four cost coefficients are fitted by non-negative least squares: ordinary
least squares, and while a coefficient comes out negative (a term the data
cannot tell apart from noise) it is pinned to zero and the rest refitted.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import msgspec
import numpy as np

from agentrt.protocol.engine import StepMoments, StepRecord
from agentrt.sim.profile import EngineProfile

TERMS = ("step_overhead_s", "prefill_token_s", "decode_seq_s", "kv_token_s")


class SwapRecord(msgspec.Struct):
    """The bench's swap measurement: one swap-out plus swap-in of ``blocks`` blocks."""

    blocks: int
    batched_seconds: float


class EngineBench(msgspec.Struct):
    steps: list[StepRecord]
    device: str = "cuda"
    engine: dict[str, Any] = {}
    swap: SwapRecord | None = None


class FitResult(msgspec.Struct, frozen=True):
    coefficients: dict[str, float]
    r2: float
    steps: int


def fit_steps(steps: list[StepRecord]) -> FitResult:
    """Non-negative least-squares fit of the four step terms to step records."""
    return fit_moments(StepMoments.total(steps))


def fit_moments(moments: StepMoments) -> FitResult:
    """Non-negative least squares from the normal equations (an engine's running sums).

    Ordinary least squares on the active terms; while a coefficient comes out
    negative it is pinned to zero and the rest refitted. Columns are scaled by
    their root mean square first, so that a constant and a count of KV tokens
    (six orders of magnitude apart) are solved with comparable weight.
    """
    n = moments.steps
    if n < len(TERMS):
        raise ValueError(f"need at least {len(TERMS)} step records to fit, got {n}")
    gram = np.zeros((4, 4))
    gram[np.triu_indices(4)] = moments.xx
    gram = gram + np.triu(gram, 1).T
    xy = np.array(moments.xy)
    scale = np.sqrt(np.maximum(np.diag(gram) / n, 1e-300))
    gram_s = gram / np.outer(scale, scale)
    xy_s = xy / scale
    active = list(range(len(TERMS)))
    coef = np.zeros(len(TERMS))
    while active:
        sub = np.ix_(active, active)
        solution, *_ = np.linalg.lstsq(gram_s[sub], xy_s[active], rcond=None)
        coef = np.zeros(len(TERMS))
        coef[active] = solution
        negative = [i for i in active if coef[i] < 0]
        if not negative:
            break
        active.remove(min(negative, key=lambda i: coef[i]))
    coef = np.maximum(coef, 0.0) / scale
    residual = moments.yy - 2.0 * float(coef @ xy) + float(coef @ gram @ coef)
    total = moments.yy - xy[0] ** 2 / n  # xy[0] is the sum of the step times
    r2 = 1.0 - max(residual, 0.0) / total if total > 0 else 1.0
    return FitResult({t: float(c) for t, c in zip(TERMS, coef, strict=True)}, r2, n)


def fit_profile(
    bench_path: str | Path,
    base: EngineProfile,
    name: str,
    settings: dict[str, Any] | None = None,
) -> tuple[EngineProfile, FitResult]:
    """A profile with ``base``'s capacities (overridden by the bench's ``engine`` object)
    and cost terms fitted to the bench's steps."""
    bench = msgspec.json.decode(Path(bench_path).read_bytes(), type=EngineBench)
    result = fit_steps(bench.steps)
    fields = set(EngineProfile.__struct_fields__) - set(TERMS) - {"name", "description"}
    capacities = {k: v for k, v in bench.engine.items() if k in fields}
    capacities["device"] = bench.device.split(":")[0]
    if bench.swap is not None and bench.swap.blocks > 0:
        capacities.setdefault("swap_block_s", bench.swap.batched_seconds / (2 * bench.swap.blocks))
    unknown = set(settings or {}) - fields
    if unknown:
        raise ValueError(f"not a profile capacity: {', '.join(sorted(unknown))}")
    capacities.update(settings or {})
    profile = msgspec.structs.replace(
        base,
        name=name,
        description=f"fitted from {Path(bench_path).name}",
        **result.coefficients,
        **capacities,
    )
    return msgspec.convert(msgspec.to_builtins(profile), EngineProfile), result
