"""The attention function the engine registers with transformers.

The model runs once per step over one flattened, unpadded batch (shape
``[1, tokens, ...]``). transformers hands every attention layer's projected
queries, keys and values to the registered function together with the extra
keyword arguments given to the model's ``forward``; ours reads the step's
:class:`AttentionMetadata` from ``attn_metadata``, writes the new keys and
values into the paged cache through the slot mapping, and attends each
sequence to its own context only.

CPU (and any device without xformers): the decode tokens (one query per
sequence, placed first in the batch) share one SDPA call over their contexts,
gathered a whole block at a time (``index_select`` of block ids: element-wise
gathers are an order of magnitude slower here) and padded to the longest with
an additive mask; each prefill chunk gets its own SDPA call: plain causal
when nothing is cached yet, else with a causal mask offset by the context
already cached, both with 4-D inputs so that SDPA picks its fused CPU kernel. Grouped-query attention is done by
folding each key head's query heads into the query length
(``[kv_heads, group * queries, d]``) rather than by copying keys per query
head. CUDA with xformers: one memory-efficient attention call over all
sequences with a block-diagonal causal bias aligned bottom-right. CUDA
without xformers: SDPA as on CPU, kept off cuDNN's kernel (see
:func:`sdpa_backends`).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.attention import SDPBackend, sdpa_kernel

from agentrt.engine.kv_cache import PagedKVCache

ATTENTION_NAME = "agentrt_paged"


@dataclass
class PrefillSpan:
    """One sequence with more than one new token in this step."""

    start: int  # first row of its tokens in the flattened batch
    length: int  # new tokens
    context: int  # tokens it attends to (cached + new)
    blocks: torch.Tensor | None  # its block table; None: no cached context, use the new keys
    mask: torch.Tensor | None  # [group * length, context] bool, True = may attend; None with blocks


@dataclass
class AttentionMetadata:
    kv_cache: PagedKVCache
    slot_mapping: torch.Tensor  # [tokens] cache slot of each new token
    num_decode: int = 0  # rows [0, num_decode) are single-token sequences
    decode_blocks: torch.Tensor | None = None  # [num_decode * max_blocks] block ids, row-major
    decode_mask: torch.Tensor | None = None  # [num_decode, 1, 1, max_blocks * block_size] additive
    decode_context: int = 0  # one decode row: its context length, instead of a mask
    prefills: tuple[PrefillSpan, ...] = ()
    # xformers path: every sequence's context slots concatenated, and the bias.
    all_kv_slots: torch.Tensor | None = None
    xformers_bias: Any = None


def paged_attention(
    module: torch.nn.Module,
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attention_mask: torch.Tensor | None,
    scaling: float | None = None,
    dropout: float = 0.0,
    **kwargs: Any,
) -> tuple[torch.Tensor, None]:
    """transformers' attention interface: ``[1, heads, tokens, d]`` in, ``[1, tokens, heads, d]`` out."""
    meta: AttentionMetadata | None = kwargs.get("attn_metadata")
    if meta is None:
        raise RuntimeError(
            f"the '{ATTENTION_NAME}' attention runs only inside agentrt's engine (no attn_metadata given)"
        )
    layer: int = module.layer_idx  # type: ignore[assignment]
    out = attend(
        layer,
        query[0].transpose(0, 1),
        key[0].transpose(0, 1),
        value[0].transpose(0, 1),
        meta,
        scaling,
    )
    return out.unsqueeze(0), None


def attend(
    layer: int,
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float | None,
) -> torch.Tensor:
    """Store one layer's new keys and values and attend every sequence to its own context.

    ``q`` is ``[tokens, heads, d]``, ``k`` and ``v`` ``[tokens, kv_heads, d]``
    (any strides); returns ``[tokens, heads, d]``.
    """
    k_cache, v_cache = meta.kv_cache.layer(layer)
    k_cache.index_copy_(0, meta.slot_mapping, k)
    v_cache.index_copy_(0, meta.slot_mapping, v)
    if meta.xformers_bias is not None:
        return _xformers_attention(q, k_cache, v_cache, meta, scaling)

    tokens, heads, d = q.shape
    kv_heads = k.shape[1]
    group = heads // kv_heads
    k_blocks, v_blocks = meta.kv_cache.layer_blocks(layer)
    b = meta.num_decode
    if b == tokens and not meta.prefills:
        return _decode_attention(q, k_blocks, v_blocks, meta, kv_heads, scaling)
    out = q.new_empty(tokens, heads, d)
    if b:
        out[:b] = _decode_attention(q[:b], k_blocks, v_blocks, meta, kv_heads, scaling)
    for span in meta.prefills:
        rows = slice(span.start, span.start + span.length)
        if span.blocks is None:
            # No cached context: plain causal attention over the new keys, in SDPA's fused
            # (flash) CPU kernel, which takes only 4-D inputs: 3-D ones (or a boolean mask on
            # the causal case) go to its much slower math path.
            o = F.scaled_dot_product_attention(
                q[rows].transpose(0, 1).unsqueeze(0),
                k[rows].transpose(0, 1).unsqueeze(0),
                v[rows].transpose(0, 1).unsqueeze(0),
                is_causal=True,
                scale=scaling,
                enable_gqa=group > 1,
            )
            out[rows] = o[0].transpose(0, 1)
        else:
            n = span.blocks.shape[0] * meta.kv_cache.block_size
            keys = k_blocks.index_select(0, span.blocks).view(n, kv_heads, d)[: span.context]
            values = v_blocks.index_select(0, span.blocks).view(n, kv_heads, d)[: span.context]
            keys, values = keys.transpose(0, 1), values.transpose(0, 1)
            qp = q[rows].transpose(0, 1).reshape(1, kv_heads, group * span.length, d)
            # 4-D, as above: the fused kernel takes the mask too (3-D would take the math path).
            o = F.scaled_dot_product_attention(
                qp, keys.unsqueeze(0), values.unsqueeze(0), attn_mask=span.mask, scale=scaling
            )
            out[rows] = o.reshape(heads, span.length, d).transpose(0, 1)  # cuDNN: not contiguous
    return out


def _decode_attention(
    q: torch.Tensor,
    k_blocks: torch.Tensor,
    v_blocks: torch.Tensor,
    meta: AttentionMetadata,
    kv_heads: int,
    scaling: float | None,
) -> torch.Tensor:
    """One SDPA call for all single-token rows: ``q`` ``[b, heads, d]`` -> ``[b, heads, d]``.

    Several rows are padded to the longest context and masked; a single row
    is cut to its own context and needs no mask.
    """
    assert meta.decode_blocks is not None
    b, heads, d = q.shape
    ctx = meta.decode_blocks.shape[0] // b * meta.kv_cache.block_size
    keys = k_blocks.index_select(0, meta.decode_blocks).view(b, ctx, kv_heads, d)
    values = v_blocks.index_select(0, meta.decode_blocks).view(b, ctx, kv_heads, d)
    if meta.decode_mask is None:
        keys, values = keys[:, : meta.decode_context], values[:, : meta.decode_context]
    qd = q.reshape(b, kv_heads, heads // kv_heads, d)
    o = F.scaled_dot_product_attention(
        qd, keys.transpose(1, 2), values.transpose(1, 2), attn_mask=meta.decode_mask, scale=scaling
    )
    return o.reshape(b, heads, d)


def _xformers_attention(
    query: torch.Tensor,
    k_cache: torch.Tensor,
    v_cache: torch.Tensor,
    meta: AttentionMetadata,
    scaling: float | None,
) -> torch.Tensor:
    from xformers.ops import memory_efficient_attention

    assert meta.all_kv_slots is not None
    tokens, heads, d = query.shape
    kv_heads = k_cache.shape[1]
    group = heads // kv_heads
    # xformers' grouped layout [batch, seq, kv_heads, group, d] shares each kv head across its group.
    q = query.reshape(1, tokens, kv_heads, group, d)
    k = (
        k_cache.index_select(0, meta.all_kv_slots)
        .unsqueeze(0)
        .unsqueeze(3)
        .expand(-1, -1, -1, group, -1)
    )
    v = (
        v_cache.index_select(0, meta.all_kv_slots)
        .unsqueeze(0)
        .unsqueeze(3)
        .expand(-1, -1, -1, group, -1)
    )
    o: torch.Tensor = memory_efficient_attention(
        q, k, v, attn_bias=meta.xformers_bias, scale=scaling
    )
    return o.reshape(tokens, heads, d)


# Every SDPA kernel but cuDNN's: it builds an execution plan for each new sequence length (tens
# of milliseconds), and a serving step's lengths change every step.
STEP_SDPA_BACKENDS = [SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.MATH]


def sdpa_backends(device: torch.device) -> contextlib.AbstractContextManager[None]:
    """The SDPA kernels an eager step may use on ``device``: on CUDA :data:`STEP_SDPA_BACKENDS`,
    elsewhere torch's own choice."""
    if device.type != "cuda":
        return contextlib.nullcontext()
    return sdpa_kernel(STEP_SDPA_BACKENDS)


def register_attention() -> str:
    """Register :func:`paged_attention` with transformers (idempotent); returns its name."""
    from transformers import AttentionInterface

    AttentionInterface.register(ATTENTION_NAME, paged_attention)
    return ATTENTION_NAME


def xformers_unusable(
    device: torch.device, dtype: torch.dtype, num_heads: int, num_kv_heads: int, head_dim: int
) -> str | None:
    """Why xformers cannot run this model's attention here, or ``None`` when it can.

    Importing ``xformers.ops`` is not enough: a wheel built for another torch
    imports but has no CUDA kernels, and its kernels refuse float32 and heads
    narrower than 32. One tiny call in the model's own shape and dtype says
    whether the prompt path would run, before any request depends on it.
    """
    try:
        from xformers.ops import memory_efficient_attention
        from xformers.ops.fmha.attn_bias import BlockDiagonalCausalFromBottomRightMask
    except ImportError:
        return "xformers is not installed"
    group = num_heads // num_kv_heads
    shape = (1, 2, num_kv_heads, group, head_dim)
    q = torch.zeros(shape, device=device, dtype=dtype)
    kv = torch.zeros((1, 2, num_kv_heads, 1, head_dim), device=device, dtype=dtype)
    kv = kv.expand(shape)
    bias = BlockDiagonalCausalFromBottomRightMask.from_seqlens(q_seqlen=[2], kv_seqlen=[2])
    try:
        memory_efficient_attention(q, kv, kv, attn_bias=bias)
    except Exception as e:  # whatever a broken or refusing build raises, SDPA serves instead
        return f"{type(e).__name__}: {' '.join(str(e).split())}"[:400]
    return None
