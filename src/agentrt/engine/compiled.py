"""Decode steps of the lean decoder as one ``torch.compile`` graph per batch bucket.

An eager decode step of a 30-layer model dispatches several hundred small
operators from Python (norms, rotary embedding, residual adds, the paged
gather, attention); inductor generates one C++ kernel for each run of
element-wise work between two matrix multiplications and calls the
matrix multiplications directly, so a step costs the weight reads plus little
else.

The graph is a pure function of one step's inputs:

- ``step``: an int64 ``[batch, 2 + blocks]`` tensor, per row the token id,
  its position and the row's block table (cut to the longest context of
  the step); rows past the real batch are zeros;
- the KV cache tensor, read only (its block count a dynamic dimension).

It returns the float32 logits of every row and the new keys and values of
every layer, ``[layers, 2, batch, kv_heads, head_dim]``, which
:meth:`CompiledDecode.run` writes into the cache with one ``index_copy_``
after the graph. Attention inside the graph reads each row's cached keys
up to (not including) its own position and adds its own new key and value
directly, so no layer needs another layer's cache write, and the graph
mutates nothing.

The batch is padded up to a bucket (a power of two) so that each bucket
compiles once; the block-table width is a dynamic dimension, so
growing contexts do not recompile. Inductor caches what it compiles on
disk (its FX-graph and AOT caches, under ``cache_dir``), so a later process
with the same model, dtype and bucket loads the kernels instead of
compiling them.

With ``static_shapes`` (the runner's choice on CUDA) the width is padded to
a bucket too and each (batch, width) shape runs over buffers of its own,
captured as a CUDA graph on GPU: see :mod:`agentrt.engine.decode_graphs`.
On CPU the width stays exact, since every padding column costs attention
work there and a CPU step has no launch overhead for a graph to save.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from agentrt.engine.block_manager import cdiv
from agentrt.engine.decode_graphs import StaticDecode, width_bucket
from agentrt.engine.decoder import LeanDecoder
from agentrt.engine.kv_cache import PagedKVCache
from agentrt.log import get_logger

log = get_logger(__name__)

# Graphs dynamo may keep for the one decode function: every bucket up to 2**16 rows, for a
# few engines of different shapes or dtypes in one process (dynamo's default is 8).
RECOMPILE_LIMIT = 64

_compiles = 0


def batch_bucket(rows: int) -> int:
    """The padded batch size ``rows`` decode rows run at: the next power of two.

    A decode step streams every weight once whatever its row count, so the
    padded rows cost little; powers of two keep the number of graphs at
    ``log2(max_num_seqs) + 1``.
    """
    if rows < 1:
        raise ValueError(f"a decode step needs at least one row, got {rows}")
    return 1 << (rows - 1).bit_length()


def compile_count() -> int:
    """Graphs handed to inductor in this process (compiled or loaded from its disk cache)."""
    return _compiles


def _backend(gm: torch.fx.GraphModule, example_inputs: list[torch.Tensor]) -> Any:
    """Inductor, counting each graph dynamo hands it (one per bucket and model shape)."""
    global _compiles
    from torch._inductor.compile_fx import compile_fx

    _compiles += 1
    log.info("compiled_decode_graph", graphs=_compiles)
    # CUDA graphs are captured around the compiled step (decode_graphs.py); inductor's own
    # (TORCHINDUCTOR_CUDAGRAPHS=1) would capture inside that capture.
    return compile_fx(gm, example_inputs, config_patches={"triton.cudagraphs": False})


def default_cache_dir() -> Path:
    """``$AGENTRT_CACHE_DIR/inductor``, or ``~/.cache/agentrt/inductor``."""
    root = os.environ.get("AGENTRT_CACHE_DIR")
    return (Path(root).expanduser() if root else Path.home() / ".cache" / "agentrt") / "inductor"


def use_cache_dir(path: Path) -> None:
    """Point inductor's on-disk caches (process-wide) at ``path``."""
    path.mkdir(parents=True, exist_ok=True)
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(path)
    import torch._inductor.config as inductor_config

    inductor_config.fx_graph_cache = True
    inductor_config.autotune_local_cache = True


class CompiledDecode:
    """Runs decode-only steps of ``decoder`` on ``kv_cache`` through compiled graphs.

    ``static_shapes`` pads the block table to width buckets and runs each
    (batch, width) shape over buffers of its own, as a CUDA graph when the
    cache is on a GPU (:class:`~agentrt.engine.decode_graphs.StaticDecode`).
    """

    def __init__(
        self,
        decoder: LeanDecoder,
        kv_cache: PagedKVCache,
        max_batch: int,
        max_blocks: int,
        cache_dir: Path | None = None,
        static_shapes: bool = False,
    ) -> None:
        self.decoder = decoder
        self.kv_cache = kv_cache
        self.block_size = kv_cache.block_size
        self.max_blocks = max_blocks
        use_cache_dir(cache_dir or default_cache_dir())
        # Rows padded in; decode steps of more rows than the largest bucket stay eager.
        self.max_batch = batch_bucket(max_batch)
        self.steps = 0  # decode steps run through the graphs
        self._buffers: dict[int, torch.Tensor] = {}
        # One preallocated view of the cache for the writes: [layers, 2, slots, kv_heads, d].
        c = kv_cache
        self._kv_slots = c.kv.view(
            c.num_layers, 2, c.num_blocks * c.block_size, c.num_kv_heads, c.head_dim
        )
        torch._dynamo.config.recompile_limit = max(
            torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT
        )
        # The pool's block count (and the rotary tables, as long as the longest context it
        # holds) follow the memory free at start-up: kept out of the graph, a restart with
        # another pool size loads the cached kernels instead of compiling.
        torch._dynamo.mark_dynamic(c.kv, 2)
        torch._dynamo.mark_dynamic(decoder.cos, 0)
        torch._dynamo.mark_dynamic(decoder.sin, 0)
        self._graph: Callable[..., tuple[torch.Tensor, torch.Tensor]] = torch.compile(
            self._forward, backend=_backend, dynamic=False, fullgraph=True
        )
        # Static shapes up to the planned width; a context past it (the table widens) runs at
        # its exact width, without a CUDA graph.
        self.static = (
            StaticDecode(
                self._graph, c.kv, self._kv_slots, decoder.lm_head.out_features, max_blocks
            )
            if static_shapes
            else None
        )
        self._warned_wide = False

    def buckets(self) -> list[int]:
        """Every batch bucket a decode step may run at, smallest first."""
        return [1 << i for i in range(self.max_batch.bit_length())]

    def warm_up(self, before_bucket: Callable[[int], None] | None = None) -> list[int]:
        """Compile (or load from the disk cache) the graph of every bucket; return the buckets.

        Run before the engine takes requests, so that no request waits on a
        compile. Each bucket runs one step of padding rows at position 0 of
        block 0, whose key and value slot it overwrites: call it only while
        the cache holds nothing. With static shapes every width of every
        bucket is prepared too (on CUDA, captured as a graph); those steps
        write nothing into the cache. ``before_bucket(rows)`` runs before each
        bucket (the runner sets the threads that bucket's steps run on).
        """
        buckets = self.buckets()
        with torch.inference_mode():  # the grad mode decode steps run in, which dynamo guards
            # Static shapes go largest first: their CUDA graphs share one memory pool.
            for bucket in reversed(buckets) if self.static is not None else buckets:
                if before_bucket is not None:
                    before_bucket(bucket)
                if self.static is not None:
                    self.static.prepare_all([bucket])
                else:
                    self.run([0] * bucket, [0] * bucket, [[0]] * bucket, range(bucket))
        self.steps = 0
        return buckets

    def buffer(self, bucket: int, blocks: int) -> torch.Tensor:
        """The step-input buffer of one bucket, ``[bucket, 2 + max_blocks]`` int64.

        It is allocated once per bucket, on the cache's device; a context
        longer than ``max_blocks`` blocks (a sequence past the length the
        runner planned for) widens it.
        """
        buf = self._buffers.get(bucket)
        if buf is None or buf.shape[1] < 2 + blocks:
            self.max_blocks = max(self.max_blocks, blocks)
            buf = torch.zeros(
                bucket, 2 + self.max_blocks, dtype=torch.long, device=self.kv_cache.device
            )
            self._buffers[bucket] = buf
        return buf

    def run(
        self,
        ids: Sequence[int],
        positions: Sequence[int],
        tables: Sequence[Sequence[int]],
        keep: Sequence[int],
    ) -> torch.Tensor:
        """One decode step of ``len(ids)`` rows; float32 logits of the ``keep`` rows."""
        n = len(ids)
        bucket = batch_bucket(n)
        self.steps += 1
        bs = self.block_size
        # At least two columns of blocks: dynamo specializes a dimension of size one, which
        # breaks the dynamic width (the padding is masked out by position).
        blocks = max(2, max(cdiv(p + 1, bs) for p in positions))
        static = self.static
        if static is not None:
            if blocks <= static.max_width:
                width = width_bucket(blocks, static.max_width)
                rows, slots = step_rows(ids, positions, tables, width, bs)
                return static.run(bucket, width, rows, slots, keep)
            if not self._warned_wide:
                self._warned_wide = True
                log.warning("decode_step_wider_than_static_shapes", blocks=blocks)
        rows, slots = step_rows(ids, positions, tables, blocks, bs)
        buf = self.buffer(bucket, blocks)
        width = 2 + blocks
        step = buf[:, :width]
        step[:n].copy_(torch.tensor(rows, dtype=torch.long).view(n, width))
        if n < bucket:
            step[n:].zero_()
        torch._dynamo.mark_dynamic(step, 1)
        logits, new_kv = self._graph(step, self.kv_cache.kv)
        slot_index = torch.tensor(slots, dtype=torch.long, device=new_kv.device)
        self._kv_slots.index_copy_(2, slot_index, new_kv[:, :, :n])
        if len(keep) == n:
            return logits[:n] if n < bucket else logits
        return logits.index_select(0, torch.tensor(list(keep), device=logits.device))

    def _forward(self, step: torch.Tensor, kv: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        dec = self.decoder
        batch = step.shape[0]
        heads, kv_heads, d = dec.num_heads, dec.num_kv_heads, dec.head_dim
        group = heads // kv_heads
        half = d // 2
        bs = self.block_size
        ids, positions, tables = step[:, 0], step[:, 1], step[:, 2:]
        context = tables.shape[1] * bs
        cols = torch.arange(context, device=step.device)
        # Slot of every cached column of every row, and which columns precede the row's token.
        slots = (tables.unsqueeze(-1) * bs + torch.arange(bs, device=step.device)).view(batch, -1)
        past = cols.unsqueeze(0) < positions.unsqueeze(1)  # [batch, context]
        cos, sin = dec.cos[positions], dec.sin[positions]
        h = F.embedding(ids, dec.embed)
        new_kv = []
        layers, blocks = kv.shape[0], kv.shape[2]
        flat = kv.view(layers, 2, blocks * bs, kv_heads, d)
        for index, layer in enumerate(dec.layers):
            x = dec._rms_norm(h, layer.input_norm)
            qkv = layer.qkv(x)
            qk = qkv[:, : dec.qk_width].view(batch, heads + kv_heads, d)
            qk = qk * cos + qk.roll(half, -1) * sin
            q = qk[:, :heads].reshape(batch, kv_heads, group, d)
            k = qk[:, heads:]
            v = qkv[:, dec.qk_width :].view(batch, kv_heads, d)
            new_kv.append(torch.stack((k, v)))
            keys = flat[index, 0][slots]  # [batch, context, kv_heads, d]
            values = flat[index, 1][slots]
            o = _decode_attention(q, k, v, keys, values, past, dec.scaling)
            h = h + layer.o(o.reshape(batch, dec.q_width))
            x = dec._rms_norm(h, layer.post_norm)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            h = h + layer.down(F.silu(gate) * up)
        h = dec._rms_norm(h, dec.norm)
        return dec.lm_head(h).float(), torch.stack(new_kv)


def _decode_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    past: torch.Tensor,
    scaling: float,
) -> torch.Tensor:
    """One query per row over its cached keys and its own new key, in float32.

    ``q`` ``[batch, kv_heads, group, d]``; ``k``, ``v`` ``[batch, kv_heads, d]``;
    ``keys``, ``values`` ``[batch, context, kv_heads, d]``; ``past``
    ``[batch, context]`` marks the cached columns the row attends to. Written
    as products and sums so that inductor fuses the paged gather into the
    reductions instead of copying the gathered keys out first.
    """
    qf = q.float() * scaling
    # [batch, kv_heads, group, context]
    scores = (qf.unsqueeze(3) * keys.float().permute(0, 2, 1, 3).unsqueeze(2)).sum(-1)
    scores = scores.masked_fill(~past[:, None, None, :], float("-inf"))
    own = (qf * k.float().unsqueeze(2)).sum(-1, keepdim=True)  # [batch, kv_heads, group, 1]
    top = torch.maximum(scores.amax(-1, keepdim=True), own)
    weights = torch.exp(scores - top)
    own_weight = torch.exp(own - top)
    total = weights.sum(-1, keepdim=True) + own_weight
    mixed = (weights.unsqueeze(-1) * values.float().permute(0, 2, 1, 3).unsqueeze(2)).sum(3)
    out = (mixed + own_weight * v.float().unsqueeze(2)) / total
    return out.to(q.dtype)


def step_rows(
    ids: Sequence[int],
    positions: Sequence[int],
    tables: Sequence[Sequence[int]],
    blocks: int,
    block_size: int,
) -> tuple[list[int], list[int]]:
    """The flat step rows (token, position, table cut or zero-padded to ``blocks``) and each
    row's KV slot."""
    rows: list[int] = []
    slots: list[int] = []
    for token, pos, table in zip(ids, positions, tables, strict=True):
        used = list(table[:blocks])
        rows.append(token)
        rows.append(pos)
        rows.extend(used)
        rows.extend([0] * (blocks - len(used)))
        slots.append(table[pos // block_size] * block_size + pos % block_size)
    return rows, slots


def describe(compiled: CompiledDecode | None) -> dict[str, Any]:
    """What the runner logs about its decode path."""
    if compiled is None:
        return {"compiled_decode": False}
    static = compiled.static
    return {
        "compiled_decode": True,
        "max_compiled_batch": compiled.max_batch,
        "cuda_graphs": static is not None and static.cuda_graphs,
        "block_table_widths": static.widths if static is not None else "dynamic",
        # Every (batch bucket, width) pair a decode step may run at: the most graphs captured.
        "static_shapes": len(compiled.buckets()) * len(static.widths) if static is not None else 0,
    }
