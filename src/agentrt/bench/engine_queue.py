"""The measured occupancy of an engine's own queue during a run (llama.cpp's server).

Whether agentrt in front of an engine can decide anything depends on the
engine having a queue at all: below its slot count every call runs at once.
llama.cpp's server started with ``--metrics`` reports the calls it runs
(``llamacpp:requests_processing``) and the ones it holds back for want of a
slot (``llamacpp:requests_deferred``) at ``/metrics``; :func:`sampled` polls
them through a run and summarises the samples. Its count of prompt tokens
processed (``llamacpp:prompt_tokens_total``, which leaves out the prefix a
slot or its prompt cache already held) gives the prompt tokens the engine
computed during the run: what a front's slot choice saves or costs it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
import httpx
import msgspec

PROCESSING = "llamacpp:requests_processing"
DEFERRED = "llamacpp:requests_deferred"
PROMPT_TOKENS = "llamacpp:prompt_tokens_total"


class EngineQueue(msgspec.Struct, kw_only=True):
    """Samples of the engine's own counts over one run."""

    samples: int
    processing_mean: float  # calls running in its slots
    deferred_mean: float  # calls waiting in its own queue
    deferred_max: float
    deferred_share: float  # share of samples with a non-empty queue
    # Prompt tokens it computed between the first and last samples (None: not reported).
    prompt_tokens: float | None = None


class Sample(msgspec.Struct, frozen=True):
    """One poll of the engine's ``/metrics``."""

    processing: float
    deferred: float
    prompt_tokens: float | None = None


def parse_metrics(text: str) -> Sample | None:
    """The engine's counts from a Prometheus exposition, None when a queue count is missing."""
    values: dict[str, float] = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in (PROCESSING, DEFERRED, PROMPT_TOKENS):
            try:
                values[name] = float(value)
            except ValueError:
                return None
    if PROCESSING not in values or DEFERRED not in values:
        return None
    return Sample(values[PROCESSING], values[DEFERRED], values.get(PROMPT_TOKENS))


class _Samples:
    def __init__(self) -> None:
        self.points: list[Sample] = []

    def summary(self) -> EngineQueue | None:
        points = self.points
        if not points:
            return None
        deferred = [p.deferred for p in points]
        first, last = points[0].prompt_tokens, points[-1].prompt_tokens
        return EngineQueue(
            samples=len(points),
            processing_mean=sum(p.processing for p in points) / len(points),
            deferred_mean=sum(deferred) / len(points),
            deferred_max=max(deferred),
            deferred_share=sum(d > 0 for d in deferred) / len(points),
            prompt_tokens=None if first is None or last is None else last - first,
        )


@asynccontextmanager
async def sampled(root: str, interval: float = 0.25) -> AsyncIterator[_Samples]:
    """Poll ``root``/metrics every ``interval`` seconds for the duration of the block.

    A failed poll is skipped (the run goes on); a server that reports neither
    count leaves no samples, and the summary is None.
    """
    samples = _Samples()
    async with httpx.AsyncClient(timeout=5.0) as client, anyio.create_task_group() as tg:

        async def poll() -> None:
            while True:
                try:
                    response = await client.get(root + "/metrics")
                    point = parse_metrics(response.text) if response.status_code == 200 else None
                except httpx.HTTPError:
                    point = None
                if point is not None:
                    samples.points.append(point)
                await anyio.sleep(interval)

        tg.start_soon(poll)
        try:
            yield samples
        finally:
            tg.cancel_scope.cancel()
