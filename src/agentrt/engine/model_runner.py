"""Runs one engine step on the model: flattened batch in, last-position logits out.

The batch is one ragged token sequence (no padding): the new tokens of every
scheduled sequence, decode sequences first, then prefill chunks. All index
tensors (positions, slot mapping, the decode sequences' context slots) are
built with a handful of vectorised tensor ops; Python loops run per sequence
or per prefill chunk, never per token.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import torch

from agentrt.config import ConfigError
from agentrt.engine.attention import (
    ATTENTION_NAME,
    AttentionMetadata,
    PrefillSpan,
    register_attention,
    sdpa_backends,
    xformers_unusable,
)
from agentrt.engine.block_manager import cdiv
from agentrt.engine.compiled import CompiledDecode, describe
from agentrt.engine.config import EngineConfig
from agentrt.engine.decoder import LeanDecoder, unsupported_reason
from agentrt.engine.kv_cache import HostSwapPool, PagedKVCache
from agentrt.engine.linear import pack_linears
from agentrt.engine.loader import resolve_dtype
from agentrt.engine.matmul import kernel_dtype
from agentrt.engine.sequence import Sequence
from agentrt.log import get_logger

if TYPE_CHECKING:
    from collections.abc import Callable
    from collections.abc import Sequence as Rows

    from agentrt.parallelism.serving import RankSplit, StagePipe

log = get_logger(__name__)

# Decode-only steps of at most this many rows run on ``[engine] decode_threads``: their kernels
# are too small to gain from a second thread that may be descheduled.
FEW_DECODE_ROWS = 8


class StepItem(Protocol):
    """What the runner reads of one row of a step: a scheduled sequence, or a worker's copy."""

    @property
    def num_tokens(self) -> int: ...  # new tokens fed this step
    @property
    def start(self) -> int: ...  # tokens already in the KV cache (the first new one's position)
    @property
    def block_table(self) -> list[int]: ...
    @property
    def samples(self) -> bool: ...
    def new_tokens(self) -> list[int]: ...


@dataclass
class ScheduledSeq:
    seq: Sequence
    num_tokens: int  # new tokens of this sequence fed to the model this step

    @property
    def samples(self) -> bool:
        """Whether this step completes the sequence's context, so a token is sampled."""
        return self.seq.num_computed_tokens + self.num_tokens == self.seq.num_tokens

    @property
    def start(self) -> int:
        return self.seq.num_computed_tokens

    @property
    def block_table(self) -> list[int]:
        return self.seq.block_table

    def new_tokens(self) -> list[int]:
        c = self.seq.num_computed_tokens
        return self.seq.token_ids[c : c + self.num_tokens]


@dataclass(frozen=True)
class ModelShape:
    num_layers: int
    num_heads: int
    num_kv_heads: int
    head_dim: int
    vocab_size: int
    max_position_embeddings: int

    @classmethod
    def of(cls, model_config: Any) -> ModelShape:
        text = (
            model_config.get_text_config()
            if hasattr(model_config, "get_text_config")
            else model_config
        )
        heads = text.num_attention_heads
        head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
        return cls(
            num_layers=text.num_hidden_layers,
            num_heads=heads,
            num_kv_heads=getattr(text, "num_key_value_heads", None) or heads,
            head_dim=head_dim,
            vocab_size=text.vocab_size,
            max_position_embeddings=getattr(text, "max_position_embeddings", 2048),
        )


def available_memory(device: torch.device) -> int:
    """Bytes the KV pool may take a fraction of: free device memory, or available RAM on CPU."""
    if device.type == "cuda":
        free, _total = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):
        return 8 * 1024**3


def kv_pool_blocks(
    config: EngineConfig, shape: ModelShape, dtype: torch.dtype, device: torch.device
) -> int:
    if config.num_kv_blocks is not None:
        return config.num_kv_blocks
    block_bytes = PagedKVCache.bytes_per_block(
        shape.num_layers, config.block_size, shape.num_kv_heads, shape.head_dim, dtype
    )
    budget = config.kv_cache_memory
    pool_bytes = int(budget * available_memory(device)) if budget <= 1 else int(budget)
    return max(1, pool_bytes // block_bytes)


class ModelRunner:
    """Builds the forward (lean decoder or transformers'), the paged KV cache, and runs steps.

    With ``shard`` it is one rank of a model split over processes (see
    :mod:`agentrt.engine.tensor_parallel`): its decoder holds that rank's
    heads, hidden units and layers, ``reduce`` sums tensor-parallel row-split
    products over the ranks, ``pipe`` links pipeline stages, and its KV cache
    holds that rank's KV heads of its layers. The model then stays
    where it is (the CPU, shared with the other ranks); the shard's weights
    are placed on ``config.device``.
    """

    def __init__(
        self,
        model: Any,
        config: EngineConfig,
        shard: RankSplit | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        pipe: StagePipe | None = None,
    ) -> None:
        self.config = config
        if config.num_threads is not None:
            torch.set_num_threads(config.num_threads)
        self._all_threads = torch.get_num_threads()
        self._threads = self._all_threads
        self.device = torch.device(config.device)
        self.dtype = resolve_dtype(config.dtype, self.device)
        self.block_size = config.block_size
        self.shard = shard
        self._reduce = reduce
        self._pipe = pipe
        # A tensor-parallel worker runs the layers only: its driver computes the logits.
        self.emits_logits = True
        if shard is None:
            self.model = model.to(device=self.device, dtype=self.dtype).eval()
        else:
            self.model = model.to(dtype=self.dtype).eval()
        self.shape = ModelShape.of(model.config)
        self.group = self.shape.num_heads // self.shape.num_kv_heads
        self.use_xformers = False
        if self.device.type == "cuda":
            why_not = xformers_unusable(
                self.device,
                self.dtype,
                self.shape.num_heads,
                self.shape.num_kv_heads,
                self.shape.head_dim,
            )
            self.use_xformers = why_not is None
            if why_not is not None:
                log.warning("xformers_unusable", reason=why_not, attention="sdpa")
        num_blocks = kv_pool_blocks(config, self.shape, self.dtype, self.device)
        self.decoder = self._lean_decoder(num_blocks * config.block_size)
        if shard is not None and self.decoder is None:
            raise ConfigError(
                "tensor_parallel_size or pipeline_parallel_size > 1 needs the lean decoder (lean_decoder = true and a "
                f"Llama, Mistral or Qwen2 model): {unsupported_reason(self.model) or 'it is off'}"
            )
        kv_heads = self.shape.num_kv_heads if shard is None else shard.num_kv_heads
        layers = (shard.layers if shard is not None else None) or (0, self.shape.num_layers)
        packed = 0
        if self.decoder is None:
            packed = pack_linears(self.model) if config.packed_linears else 0
            register_attention()
            self.model.set_attn_implementation(ATTENTION_NAME)
        self.kv_cache = PagedKVCache(
            layers[1] - layers[0],
            num_blocks,
            config.block_size,
            kv_heads,
            self.shape.head_dim,
            self.dtype,
            self.device,
        )
        self.compiled = self._compiled_decode(num_blocks)
        log.info(
            "kv_cache_ready",
            blocks=num_blocks,
            block_size=config.block_size,
            bytes=num_blocks * self.kv_cache.block_bytes,
            attention="xformers" if self.use_xformers else "sdpa",
            dtype=str(self.dtype),
            forward="lean" if self.decoder is not None else "transformers",
            packed_linears=packed,
            **describe(self.compiled),
        )

    def _compiled_decode(self, num_blocks: int) -> CompiledDecode | None:
        """The compiled decode path when the config asks for it and the lean decoder runs.

        It takes the decode-only steps whatever the attention of the others
        (SDPA, or xformers on CUDA for prompt chunks and mixed steps). On
        CUDA each (batch, width) shape of it is a CUDA graph unless
        ``cuda_graphs`` is false.
        """
        if not self.config.compile or self.decoder is None:
            return None
        # EngineConfig refuses cuda_graphs = true without compile or off CUDA.
        graphs = self.config.cuda_graphs
        if graphs is None:
            graphs = self.device.type == "cuda"
        cache_dir = self.config.compile_cache_dir
        max_len = min(
            num_blocks * self.block_size,
            self.config.max_model_len or self.shape.max_position_embeddings,
        )
        compiled = CompiledDecode(
            self.decoder,
            self.kv_cache,
            max_batch=self.config.max_num_seqs,
            max_blocks=cdiv(max_len, self.block_size) + 1,
            cache_dir=Path(cache_dir).expanduser() if cache_dir else None,
            static_shapes=graphs,
        )
        if self.config.compile_warmup:
            started = time.perf_counter()
            # Each bucket compiles on the threads its steps run on (inductor bakes the count in).
            buckets = compiled.warm_up(
                lambda rows: self._use_threads(self.step_threads(rows, True))
            )
            log.info(
                "compiled_decode_warm",
                buckets=buckets,
                cuda_graphs=compiled.static.graph_count if compiled.static is not None else 0,
                seconds=round(time.perf_counter() - started, 1),
            )
        return compiled

    def _lean_decoder(self, pool_tokens: int) -> LeanDecoder | None:
        """The lean forward when the config asks for it and the model allows it, else ``None``."""
        quantization = self.config.quantization
        if not self.config.lean_decoder:
            return None
        reason = unsupported_reason(self.model)
        if reason is None and quantization != "none" and self.device.type != "cpu":
            reason = f"{quantization} weights run on CPU only"
        if reason is not None:
            if quantization != "none":
                raise ConfigError(f"quantization {quantization!r} is not available: {reason}")
            log.info("lean_decoder_unavailable", reason=reason)
            return None
        # No sequence outgrows the KV pool, so the rotary tables need no more positions.
        positions = pool_tokens
        if self.config.max_model_len is not None:
            positions = min(positions, self.config.max_model_len)
        with torch.inference_mode():
            decoder = LeanDecoder(
                self.model,
                positions,
                pack=self.config.packed_linears,
                quantization=quantization,
                shard=self.shard,
                reduce=self._reduce,
                device=None if self.shard is None else self.device,
                pipe=self._pipe,
            )
        if quantization != "none" and kernel_dtype(self.dtype) == torch.float32:
            log.warning(
                "quantized_float32_activations",
                detail="this CPU has no native bfloat16, so the weight-only kernels get float32 "
                "activations, their slow path; compare with `agentrt bench engine`",
            )
        log.info(
            "lean_decoder_ready",
            quantization=quantization,
            weight_bytes_per_step=decoder.weight_bytes,
        )
        return decoder

    def swap_pool(self, capacity_bytes: int) -> HostSwapPool:
        """The host pool for this runner's swapped-out KV, ``capacity_bytes`` large."""
        return HostSwapPool(self.kv_cache, capacity_bytes)

    def close(self) -> None:
        """Release what outlives the object (nothing on one device)."""

    @torch.inference_mode()
    def execute(self, batch: Rows[StepItem], every_token: bool = False) -> torch.Tensor:
        """Run the model once over ``batch`` (decode sequences first); return float32 logits
        ``[num_sampling_seqs, vocab]`` for the sequences whose context this step completes,
        in batch order; with ``every_token``, ``[tokens fed, vocab]`` (scoring a text)."""
        decode_only = not every_token and all(i.num_tokens == 1 for i in batch)
        self._use_threads(self.step_threads(len(batch), decode_only))
        if self.compiled is not None and decode_only and len(batch) <= self.compiled.max_batch:
            return self._execute_compiled(batch)
        input_ids, positions, meta, keep = self._prepare(batch, every_token)
        if not self.emits_logits:
            keep = keep[:0]
        with sdpa_backends(self.device):
            if self.decoder is not None:
                return self.decoder.forward(input_ids, positions, meta, keep)
            out = self.model(
                input_ids=input_ids.unsqueeze(0),
                position_ids=positions.unsqueeze(0),
                use_cache=False,
                attn_metadata=meta,
                logits_to_keep=keep,
            )
        logits: torch.Tensor = out.logits[0].float()
        return logits

    def step_threads(self, rows: int, decode_only: bool) -> int:
        """The CPU threads a step of ``rows`` rows runs on (``[engine] decode_threads``)."""
        few = self.config.decode_threads
        if (
            few is not None
            and decode_only
            and rows <= FEW_DECODE_ROWS
            and self.device.type == "cpu"
        ):
            return few
        return self._all_threads

    def _use_threads(self, threads: int) -> None:
        if threads != self._threads:
            torch.set_num_threads(threads)
            self._threads = threads

    def _execute_compiled(self, batch: Rows[StepItem]) -> torch.Tensor:
        assert self.compiled is not None
        ids: list[int] = []
        positions: list[int] = []
        keep: list[int] = []
        for row, item in enumerate(batch):
            ids.extend(item.new_tokens())
            positions.append(item.start)
            if item.samples:
                keep.append(row)
        tables = [item.block_table for item in batch]
        return self.compiled.run(ids, positions, tables, keep)

    def _prepare(
        self, batch: Rows[StepItem], every_token: bool = False
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        if not every_token and not self.use_xformers and all(i.num_tokens == 1 for i in batch):
            return self._prepare_decode(batch)
        dev, bs = self.device, self.block_size
        tokens: list[int] = []
        starts: list[int] = []
        lens: list[int] = []
        for item in batch:
            tokens.extend(item.new_tokens())
            starts.append(item.start)
            lens.append(item.num_tokens)
        max_blocks = max(len(item.block_table) for item in batch)
        tables = torch.tensor(
            [item.block_table + [0] * (max_blocks - len(item.block_table)) for item in batch],
            dtype=torch.long,
        )
        start_t = torch.tensor(starts, dtype=torch.long)
        len_t = torch.tensor(lens, dtype=torch.long)
        seq_of_token = torch.repeat_interleave(torch.arange(len(batch)), len_t)
        first_row = torch.cumsum(len_t, 0) - len_t
        offsets = torch.arange(len(tokens)) - first_row[seq_of_token]
        positions = start_t[seq_of_token] + offsets
        slots = tables[seq_of_token, positions // bs] * bs + positions % bs
        context = start_t + len_t

        meta = AttentionMetadata(kv_cache=self.kv_cache, slot_mapping=slots.to(dev))
        num_decode = 0
        while num_decode < len(batch) and lens[num_decode] == 1:
            num_decode += 1
        if self.use_xformers:
            self._xformers_metadata(meta, tables, context, len_t)
        else:
            if num_decode:
                ctx = context[:num_decode]
                blocks = cdiv(int(ctx.max()), bs)
                cols = torch.arange(blocks * bs)
                meta.num_decode = num_decode
                meta.decode_blocks = tables[:num_decode, :blocks].reshape(-1).to(dev)
                hidden = (cols.unsqueeze(0) >= ctx.unsqueeze(1)).view(num_decode, 1, 1, -1)
                meta.decode_mask = (
                    torch.zeros(hidden.shape, dtype=self.dtype)
                    .masked_fill_(hidden, float("-inf"))
                    .to(dev)
                )
            meta.prefills = tuple(
                self._prefill_span(tables[i], starts[i], lens[i], int(first_row[i]))
                for i in range(num_decode, len(batch))
            )
        if every_token:
            keep = list(range(len(tokens)))
        else:
            keep = [int(first_row[i]) + lens[i] - 1 for i, item in enumerate(batch) if item.samples]
        return (
            torch.tensor(tokens, dtype=torch.long, device=dev),
            positions.to(dev),
            meta,
            torch.tensor(keep, dtype=torch.long, device=dev),
        )

    def _prepare_decode(
        self, batch: Rows[StepItem]
    ) -> tuple[torch.Tensor, torch.Tensor, AttentionMetadata, torch.Tensor]:
        """:meth:`_prepare` for a batch of single-token rows, from Python lists in a few tensors.

        One sequence needs no mask: its keys are cut to its context length.
        """
        bs = self.block_size
        n = len(batch)
        ids: list[int] = []
        positions: list[int] = []
        slots: list[int] = []
        keep: list[int] = []
        for row, item in enumerate(batch):
            pos = item.start
            ids.extend(item.new_tokens())
            positions.append(pos)
            slots.append(item.block_table[pos // bs] * bs + pos % bs)
            if item.samples:
                keep.append(row)
        blocks = cdiv(max(positions) + 1, bs)
        flat: list[int] = []
        for item in batch:
            table = item.block_table[:blocks]
            flat.extend(table)
            flat.extend([0] * (blocks - len(table)))
        step = torch.tensor(ids + positions + slots + keep + flat, dtype=torch.long)
        step = step.to(self.device)
        meta = AttentionMetadata(kv_cache=self.kv_cache, slot_mapping=step[2 * n : 3 * n])
        meta.num_decode = n
        meta.decode_blocks = step[3 * n + len(keep) :]
        if n == 1:
            meta.decode_context = positions[0] + 1
        else:
            context = torch.tensor(positions, dtype=torch.long).add_(1).unsqueeze(1)
            hidden = torch.arange(blocks * bs).unsqueeze(0) >= context
            mask = torch.zeros(n, 1, 1, blocks * bs, dtype=self.dtype)
            meta.decode_mask = mask.masked_fill_(hidden.view(n, 1, 1, -1), float("-inf")).to(
                self.device
            )
        return step[:n], step[n : 2 * n], meta, step[3 * n : 3 * n + len(keep)]

    def _prefill_span(self, table: torch.Tensor, start: int, length: int, row: int) -> PrefillSpan:
        context = start + length
        if start == 0:  # nothing cached: plain causal attention over the new keys, no mask
            return PrefillSpan(start=row, length=length, context=context, blocks=None, mask=None)
        # Query i sits at position start + i and sees keys 0..start + i; the mask repeats
        # once per query head of a key head (see attention.py).
        mask = torch.arange(context).unsqueeze(0) <= (start + torch.arange(length)).unsqueeze(1)
        mask = mask.repeat(self.group, 1).to(self.device)
        blocks = table[: cdiv(context, self.block_size)].to(self.device)
        return PrefillSpan(start=row, length=length, context=context, blocks=blocks, mask=mask)

    def _xformers_metadata(
        self,
        meta: AttentionMetadata,
        tables: torch.Tensor,
        context: torch.Tensor,
        lens: torch.Tensor,
    ) -> None:
        from xformers.ops.fmha.attn_bias import BlockDiagonalCausalFromBottomRightMask

        bs = self.block_size
        seq_of_slot = torch.repeat_interleave(torch.arange(len(context)), context)
        first = torch.cumsum(context, 0) - context
        cols = torch.arange(int(context.sum())) - first[seq_of_slot]
        meta.all_kv_slots = (tables[seq_of_slot, cols // bs] * bs + cols % bs).to(self.device)
        meta.xformers_bias = BlockDiagonalCausalFromBottomRightMask.from_seqlens(
            q_seqlen=lens.tolist(), kv_seqlen=context.tolist()
        )
