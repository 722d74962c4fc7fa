"""The embedded engine's model over several local processes: tensor parallel or pipeline stages.

The engine (scheduler, block manager, sampler) stays one, in the calling
process. Its runner, :class:`ParallelRunner`, is rank 0 of a group of
``tensor_parallel_size`` (or ``pipeline_parallel_size``) ranks; ranks
1..n-1 are spawned processes that each build a
:class:`~agentrt.engine.model_runner.ModelRunner` over their share of the
model (Megatron's split, :func:`agentrt.parallelism.serving.megatron_split`,
or whole layers, :func:`~agentrt.parallelism.serving.pipeline_split`) and a
paged KV cache of their KV heads and layers, with the same block ids as
rank 0's.

Each step, rank 0 broadcasts what the step reads (every row's new tokens,
first position, block table and whether it samples) together with the KV
copies the engine made since the last step (swap-outs and swap-ins, with
their host ranges), then every rank runs the same forward on its shard in
lockstep. Tensor parallel: two all-reduces per layer, after the attention
output and the MLP's down projection. Pipeline: stage i sends its hidden
states to stage i + 1, and the last stage sends the kept rows back to stage
0 (rank 0), see :class:`~agentrt.parallelism.serving.StagePipe`. The
embedding, the final norm and ``lm_head`` are whole on every rank, and only
rank 0 computes logits:
splitting the head by vocabulary would divide its product but add an
all-gather of the logits each step, and the sampler runs on rank 0 anyway.

The model's weights reach the workers through shared memory (torch's
multiprocessing pickles tensors that way), so it is loaded once. A worker
that dies ends the step rank 0 waits in with an error naming it; closing
the runner stops the workers (they leave with ``os._exit``, see
:mod:`agentrt.parallelism.spawn`), and one that does not leave is killed.
"""

from __future__ import annotations

import contextlib
import os
import weakref
from collections.abc import Callable
from collections.abc import Sequence as Rows
from dataclasses import dataclass
from typing import Any

import msgspec
import torch

from agentrt.config import ConfigError
from agentrt.engine.config import EngineConfig
from agentrt.engine.kv_cache import HostRange, HostSwapPool, PagedKVCache
from agentrt.engine.loader import resolve_dtype
from agentrt.engine.model_runner import ModelRunner, ModelShape, StepItem, kv_pool_blocks
from agentrt.log import get_logger
from agentrt.parallelism.errors import PlanError
from agentrt.parallelism.serving import (
    Collectives,
    LocalGroup,
    RankSplit,
    StagePipe,
    join_group,
    megatron_split,
    pipeline_split,
)

log = get_logger(__name__)

_STOP, _STEP = 0, 1
_SWAP_OUT, _SWAP_IN = 0, 1


@dataclass
class StepRow:
    """A worker's copy of one scheduled row (the :class:`StepItem` the runner reads)."""

    num_tokens: int
    start: int
    block_table: list[int]
    samples: bool
    tokens: list[int]

    def new_tokens(self) -> list[int]:
        return self.tokens


@dataclass(frozen=True)
class KVCopy:
    """A swap copy the engine made on rank 0, replayed on the workers' caches."""

    kind: int  # _SWAP_OUT or _SWAP_IN
    start: int  # the host range's first block
    block_ids: list[int]


def encode_step(batch: Rows[StepItem], every_token: bool, copies: list[KVCopy]) -> list[int]:
    """One step as a flat list of ints: header, copies, rows, then tokens and block tables."""
    out = [int(every_token), len(batch), len(copies)]
    for copy in copies:
        out += [copy.kind, copy.start, len(copy.block_ids), *copy.block_ids]
    for item in batch:
        out += [item.start, item.num_tokens, int(item.samples), len(item.block_table)]
    for item in batch:
        out += item.new_tokens()
        out += item.block_table
    return out


def decode_step(data: list[int]) -> tuple[list[StepRow], bool, list[KVCopy]]:
    """The inverse of :func:`encode_step`."""
    every_token, rows, ncopies = bool(data[0]), data[1], data[2]
    at = 3
    copies: list[KVCopy] = []
    for _ in range(ncopies):
        kind, start, n = data[at : at + 3]
        copies.append(KVCopy(kind, start, data[at + 3 : at + 3 + n]))
        at += 3 + n
    heads = [data[at + 4 * i : at + 4 * i + 4] for i in range(rows)]
    at += 4 * rows
    batch: list[StepRow] = []
    for start, num_tokens, samples, nblocks in heads:
        tokens = data[at : at + num_tokens]
        at += num_tokens
        table = data[at : at + nblocks]
        at += nblocks
        batch.append(StepRow(num_tokens, start, table, bool(samples), tokens))
    return batch, every_token, copies


def _send(collectives: Collectives, kind: int, payload: list[int]) -> None:
    collectives.broadcast(torch.tensor([kind, len(payload)], dtype=torch.long))
    if payload:
        collectives.broadcast(torch.tensor(payload, dtype=torch.long))


def _receive(collectives: Collectives) -> list[int] | None:
    header = torch.empty(2, dtype=torch.long)
    collectives.broadcast(header)
    kind, length = header.tolist()
    if kind == _STOP:
        return None
    payload = torch.empty(length, dtype=torch.long)
    if length:
        collectives.broadcast(payload)
    data: list[int] = payload.tolist()
    return data


class RecordingSwapPool(HostSwapPool):
    """Rank 0's host pool: each copy it makes is also queued for the workers' caches."""

    def __init__(
        self, cache: PagedKVCache, num_blocks: int, record: Callable[[KVCopy], None]
    ) -> None:
        super().__init__(cache, 0, num_blocks=num_blocks)
        self._record = record

    def copy_out(self, handle: HostRange, block_ids: list[int]) -> None:
        super().copy_out(handle, block_ids)
        self._record(KVCopy(_SWAP_OUT, handle.start, list(block_ids)))

    def copy_in(self, handle: HostRange, block_ids: list[int]) -> None:
        super().copy_in(handle, block_ids)
        self._record(KVCopy(_SWAP_IN, handle.start, list(block_ids)))


def rank_device(device: str, rank: int) -> torch.device:
    """Rank ``rank``'s device: ``cuda:rank`` on CUDA (one GPU per rank), else ``device``."""
    dev = torch.device(device)
    return torch.device("cuda", rank) if dev.type == "cuda" else dev


def _intermediate_size(model: Any) -> int:
    config = model.config
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    return int(text.intermediate_size)


def _splits(model: Any, config: EngineConfig) -> list[RankSplit]:
    shape = ModelShape.of(model.config)
    mlp = _intermediate_size(model)
    if config.pipeline_parallel_size > 1:
        return pipeline_split(
            shape.num_heads,
            shape.num_kv_heads,
            mlp,
            shape.num_layers,
            config.pipeline_parallel_size,
        )
    return megatron_split(shape.num_heads, shape.num_kv_heads, mlp, config.tensor_parallel_size)


def _links(
    split: RankSplit, collectives: Collectives
) -> tuple[Callable[[torch.Tensor], torch.Tensor] | None, StagePipe | None]:
    """A rank's all-reduce (tensor parallel) or its pipe to the other stages (pipeline)."""
    if split.stages > 1:
        return None, StagePipe(collectives, split)
    return collectives.all_reduce, None


class ParallelRunner(ModelRunner):
    """Rank 0 of a model split over processes: runs its share here and drives the workers'."""

    def __init__(self, model: Any, config: EngineConfig) -> None:
        n = config.tensor_parallel_size * config.pipeline_parallel_size
        device = rank_device(config.device, 0)
        dtype = resolve_dtype(config.dtype, device)
        shape = ModelShape.of(model.config)
        try:
            splits = _splits(model, config)
        except PlanError as exc:
            raise ConfigError(str(exc)) from None
        threads = config.num_threads
        if threads is None and device.type == "cpu":
            threads = max(1, (os.cpu_count() or 1) // n)  # the ranks share this host's cores
        num_blocks = kv_pool_blocks(config, shape, dtype, device)
        rank_config = msgspec.structs.replace(
            config, device=str(device), num_kv_blocks=num_blocks, num_threads=threads
        )
        # Host pools of equal block counts on every rank, sized by the whole model's blocks.
        self._full_block_bytes = PagedKVCache.bytes_per_block(
            shape.num_layers, config.block_size, shape.num_kv_heads, shape.head_dim, dtype
        )
        swap_blocks = config.swap_space // self._full_block_bytes
        # Shared with the workers from CPU memory; each rank places its own shard.
        model = model.to(device="cpu", dtype=dtype).eval()
        self.ranks = LocalGroup(n, device)
        collectives = self.ranks.start(_worker_main, (model, rank_config, splits, swap_blocks))
        self._collectives = collectives
        self._copies: list[KVCopy] = []
        self._closer = weakref.finalize(self, _stop_workers, self.ranks, collectives)
        try:
            reduce, pipe = _links(splits[0], collectives)
            super().__init__(model, rank_config, shard=splits[0], reduce=reduce, pipe=pipe)
            collectives.barrier()  # every worker has built its shard
        except RuntimeError as exc:
            self.close()
            raise self.ranks.failure(exc) from None
        except BaseException:
            self.close()
            raise
        log.info(
            "parallel_model_ready",
            ranks=n,
            heads=[s.num_heads for s in splits],
            kv_heads=[s.num_kv_heads for s in splits],
            mlp=[s.mlp[1] - s.mlp[0] for s in splits],
            layers=[s.layers for s in splits],
            threads_per_rank=threads,
        )

    def swap_pool(self, capacity_bytes: int) -> HostSwapPool:
        return RecordingSwapPool(
            self.kv_cache, capacity_bytes // self._full_block_bytes, self._copies.append
        )

    def execute(self, batch: Rows[StepItem], every_token: bool = False) -> torch.Tensor:
        payload = encode_step(batch, every_token, self._copies)
        self._copies.clear()
        try:
            _send(self._collectives, _STEP, payload)
            return super().execute(batch, every_token)
        except RuntimeError as exc:
            raise self.ranks.failure(exc) from None

    def close(self) -> None:
        """Stop the workers (idempotent)."""
        self._closer()


def _stop_workers(ranks: LocalGroup, collectives: Collectives) -> None:
    # A worker that is gone already fails the send; the others see its connection close.
    with contextlib.suppress(RuntimeError):
        _send(collectives, _STOP, [])
    ranks.stop()


def _worker_main(
    rank: int,
    size: int,
    port: int,
    prefix: str,
    model: Any,
    config: EngineConfig,
    splits: list[RankSplit],
    swap_blocks: int,
) -> None:
    """A worker rank: build its shard, then run every step rank 0 sends until it says stop."""
    device = rank_device(config.device, rank)
    collectives = join_group(port, prefix, rank, size, device)
    rank_config = msgspec.structs.replace(config, device=str(device))
    split = splits[rank]
    reduce, pipe = _links(split, collectives)
    runner = ModelRunner(model, rank_config, shard=split, reduce=reduce, pipe=pipe)
    # Rank 0 computes the logits; a tensor-parallel rank needs no row of them, the last
    # pipeline stage sends rank 0 the kept rows' hidden states.
    runner.emits_logits = split.stages > 1
    pool = HostSwapPool(runner.kv_cache, 0, num_blocks=swap_blocks)
    collectives.barrier()
    while (data := _receive(collectives)) is not None:
        batch, every_token, copies = decode_step(data)
        for copy in copies:
            handle = HostRange(copy.start, len(copy.block_ids))
            if copy.kind == _SWAP_OUT:
                pool.copy_out(handle, copy.block_ids)
            else:
                pool.copy_in(handle, copy.block_ids)
        if batch:
            runner.execute(batch, every_token)
