"""A lean forward pass for Llama-family decoders over the engine's flattened batch.

transformers' modules cost a decode step more in Python and operator
dispatch than in arithmetic: at one token per sequence every projection,
norm and rotary embedding is a separate small kernel launched through
several layers of ``nn.Module`` calls. This forward reads the same weights
and does the same arithmetic with fewer, larger operations:

- the query, key and value projections are one matrix (``qkv``), and the
  gate and up projections another (``gate_up``), so each layer makes four
  matrix multiplications instead of seven;
- the rotary embedding is applied to the queries and keys together, from
  cos/sin tables computed once for every position (by the model's own
  rotary module, so scaled RoPE variants come out the same);
- attention is :func:`~agentrt.engine.attention.attend` on the paged cache,
  as on the transformers path;
- the final norm and ``lm_head`` run only on the rows whose logits are kept.

Given a :class:`~agentrt.parallelism.serving.RankSplit`, the decoder holds one
rank's share of a tensor-parallel model (Megatron's split): the query heads
of its KV heads and the MLP's hidden units of its range, with the ``o`` and
``down`` products summed over the ranks by ``reduce`` (their biases, if
any, added by the rank holding the first columns). Embedding, norms and
``lm_head`` stay whole on every rank. A split with ``layers`` (a pipeline
stage) holds only those layers; its ``pipe`` brings the previous stage's
hidden states in and hands its own on (the first stage embeds, and computes
the logits of the rows the last stage sends back). The model's modules are
left as they are (worker processes share them with the driver); the
shard's fused and column-cut weights are its own copies.

Architectures it does not know (and Llama variants it cannot reproduce
exactly) keep the transformers forward: :func:`unsupported_reason` says why.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F

from agentrt.engine.attention import AttentionMetadata, attend
from agentrt.engine.matmul import Weight, fuse, make_weight

if TYPE_CHECKING:
    from agentrt.parallelism.serving import RankSplit, StagePipe

# Model types whose decoder layers are exactly: RMSNorm, attention (q/k/v/o projections, RoPE),
# RMSNorm, SiLU-gated MLP, each with a residual; no embedding scale, no norms inside attention.
SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2"})


@dataclass
class Layer:
    input_norm: torch.Tensor
    qkv: Weight
    o: Weight
    post_norm: torch.Tensor
    gate_up: Weight
    down: Weight


def _text_config(model: Any) -> Any:
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def unsupported_reason(model: Any) -> str | None:
    """Why :class:`LeanDecoder` cannot run ``model`` exactly; ``None`` when it can."""
    config = _text_config(model)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        return f"model type {model_type!r} is not one of {sorted(SUPPORTED_MODEL_TYPES)}"
    if getattr(config, "hidden_act", "silu") != "silu":
        return f"activation {config.hidden_act!r} is not silu"
    inner = getattr(model, "model", None)
    rotary = getattr(inner, "rotary_emb", None)
    if inner is None or rotary is None or not hasattr(model, "lm_head"):
        return "the model has no .model.rotary_emb or no .lm_head"
    rope_type = str(getattr(rotary, "rope_type", "default"))
    if "dynamic" in rope_type or "longrope" in rope_type:
        return f"rope type {rope_type!r} changes with the sequence length"
    layer = inner.layers[0]
    attn = layer.self_attn
    if any(hasattr(attn, name) for name in ("q_norm", "k_norm")):
        return "the attention normalises queries or keys"
    if not all(hasattr(attn, n) for n in ("q_proj", "k_proj", "v_proj", "o_proj")):
        return "the attention has no separate q/k/v/o projections"
    if not all(hasattr(layer.mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
        return "the MLP has no gate/up/down projections"
    return None


def _fuse_in_place(linears: list[Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Fuse the linears' weights and point each linear at its rows of the fused copy.

    The model's own modules keep working on the same memory, so fusing costs
    no second copy of the weights.
    """
    weight, bias = fuse([m.weight.detach() for m in linears], [m.bias for m in linears])
    row = 0
    for m in linears:
        rows = m.weight.shape[0]
        m.weight = torch.nn.Parameter(weight[row : row + rows], requires_grad=False)
        if m.bias is not None and bias is not None:
            m.bias = torch.nn.Parameter(bias[row : row + rows], requires_grad=False)
        row += rows
    return weight, bias


class LeanDecoder:
    """The forward pass of a supported model, on weights shared with (or fused from) it."""

    def __init__(
        self,
        model: Any,
        max_positions: int,
        pack: bool,
        quantization: str = "none",
        shard: RankSplit | None = None,
        reduce: Callable[[torch.Tensor], torch.Tensor] | None = None,
        device: torch.device | None = None,
        pipe: StagePipe | None = None,
    ) -> None:
        reason = unsupported_reason(model)
        if reason is not None:
            raise ValueError(f"LeanDecoder cannot run this model: {reason}")
        config = _text_config(model)
        inner = model.model
        first = inner.layers[0].self_attn
        self.num_heads = config.num_attention_heads
        self.num_kv_heads = getattr(config, "num_key_value_heads", None) or self.num_heads
        self.head_dim = first.head_dim
        self.scaling = float(first.scaling)
        self.eps = float(inner.norm.variance_epsilon)
        self.reduce = reduce
        self.pipe = pipe
        self.hidden_size = int(config.hidden_size)
        self.embed = _on(inner.embed_tokens.weight, device)
        self.norm = _on(inner.norm.weight, device)
        # The head picks the token directly, so int4 models keep it in int8 (see matmul.py).
        head_quantization = "int8" if quantization == "int4" else quantization
        self.lm_head = make_weight(
            _on(model.lm_head.weight, device),
            _on(model.lm_head.bias, device),
            head_quantization,
            pack,
        )
        if shard is None:
            self.layers = [self._layer(layer, pack, quantization) for layer in inner.layers]
        else:
            self.num_heads, self.num_kv_heads = shard.num_heads, shard.num_kv_heads
            start, stop = shard.layers or (0, len(inner.layers))
            self.layers = [
                self._shard_layer(layer, pack, quantization, shard, device)
                for layer in inner.layers[start:stop]
            ]
        self.cos, self.sin = self._rope_tables(inner.rotary_emb, max_positions)
        self.q_width = self.num_heads * self.head_dim
        self.qk_width = (self.num_heads + self.num_kv_heads) * self.head_dim

    @staticmethod
    def _layer(layer: Any, pack: bool, quantization: str) -> Layer:
        attn, mlp = layer.self_attn, layer.mlp
        qkv = _fuse_in_place([attn.q_proj, attn.k_proj, attn.v_proj])
        gate_up = _fuse_in_place([mlp.gate_proj, mlp.up_proj])
        return Layer(
            input_norm=layer.input_layernorm.weight,
            qkv=make_weight(*qkv, quantization, pack),
            o=make_weight(attn.o_proj.weight, attn.o_proj.bias, quantization, pack),
            post_norm=layer.post_attention_layernorm.weight,
            gate_up=make_weight(*gate_up, quantization, pack),
            down=make_weight(mlp.down_proj.weight, mlp.down_proj.bias, quantization, pack),
        )

    def _shard_layer(
        self,
        layer: Any,
        pack: bool,
        quantization: str,
        shard: RankSplit,
        device: torch.device | None,
    ) -> Layer:
        """One rank's copy of a layer: its heads' q/k/v and hidden units' gate/up rows, the
        matching o and down columns."""
        attn, mlp, d = layer.self_attn, layer.mlp, self.head_dim
        heads = slice(shard.heads[0] * d, shard.heads[1] * d)
        kv = slice(shard.kv_heads[0] * d, shard.kv_heads[1] * d)
        units = slice(*shard.mlp)
        cuts = ((attn.q_proj, heads), (attn.k_proj, kv), (attn.v_proj, kv))
        qkv = fuse(
            [_on(m.weight[rows], device) for m, rows in cuts],
            [_rows(m.bias, rows, device) for m, rows in cuts],
        )
        gate_up = fuse(
            [_on(mlp.gate_proj.weight[units], device), _on(mlp.up_proj.weight[units], device)],
            [_rows(mlp.gate_proj.bias, units, device), _rows(mlp.up_proj.bias, units, device)],
        )
        # A row-split product's bias is added once, after the sum: by the rank holding the
        # first columns.
        return Layer(
            input_norm=_on(layer.input_layernorm.weight, device),
            qkv=make_weight(*qkv, quantization, pack),
            o=make_weight(
                _on(attn.o_proj.weight[:, heads], device),
                _on(attn.o_proj.bias, device) if shard.heads[0] == 0 else None,
                quantization,
                pack,
            ),
            post_norm=_on(layer.post_attention_layernorm.weight, device),
            gate_up=make_weight(*gate_up, quantization, pack),
            down=make_weight(
                _on(mlp.down_proj.weight[:, units], device),
                _on(mlp.down_proj.bias, device) if shard.mlp[0] == 0 else None,
                quantization,
                pack,
            ),
        )

    def _rope_tables(self, rotary: Any, positions: int) -> tuple[torch.Tensor, torch.Tensor]:
        """``[positions, 1, head_dim]`` cos and sign-folded sin, in the model's dtype.

        ``rotate_half(x) * sin`` equals ``roll(x, half) * sin'`` where ``sin'``
        has its first half negated, so the rotation is one ``roll``.
        """
        ids = torch.arange(positions, device=self.embed.device).unsqueeze(0)
        cos, sin = rotary(self.embed[:1], ids)
        half = self.head_dim // 2
        sin = torch.cat((-sin[..., :half], sin[..., half:]), dim=-1)
        return cos[0].unsqueeze(1).contiguous(), sin[0].unsqueeze(1).contiguous()

    @property
    def weight_bytes(self) -> int:
        """Bytes of weights one decode step streams (every projection and the head)."""
        per_layer = sum(
            w.nbytes
            for layer in self.layers
            for w in (layer.qkv, layer.o, layer.gate_up, layer.down)
        )
        return per_layer + self.lm_head.nbytes

    def _rms_norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        # transformers' LlamaRMSNorm, operation for operation (float32 statistics).
        xf = x.float()
        xf = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + self.eps)
        return weight * xf.to(x.dtype)

    def forward(
        self,
        input_ids: torch.Tensor,
        positions: torch.Tensor,
        meta: AttentionMetadata,
        keep: torch.Tensor,
    ) -> torch.Tensor:
        """``[tokens]`` ids and positions in; float32 logits of the ``keep`` rows out."""
        tokens = input_ids.shape[0]
        heads, kv_heads, d = self.num_heads, self.num_kv_heads, self.head_dim
        cos, sin = self.cos[positions], self.sin[positions]
        half = d // 2
        pipe = self.pipe
        if pipe is None or pipe.first:
            h = F.embedding(input_ids, self.embed)
        else:
            h = pipe.receive(tokens, self.hidden_size, self.norm)
        for index, layer in enumerate(self.layers):
            x = self._rms_norm(h, layer.input_norm)
            qkv = layer.qkv(x)
            qk = qkv[:, : self.qk_width].view(tokens, heads + kv_heads, d)
            qk = qk * cos + qk.roll(half, -1) * sin
            v = qkv[:, self.qk_width :].view(tokens, kv_heads, d)
            o = attend(index, qk[:, :heads], qk[:, heads:], v, meta, self.scaling)
            attended = layer.o(o.reshape(tokens, self.q_width))
            h = h + (attended if self.reduce is None else self.reduce(attended))
            x = self._rms_norm(h, layer.post_norm)
            gate, up = layer.gate_up(x).chunk(2, dim=-1)
            mlp = layer.down(F.silu(gate) * up)
            h = h + (mlp if self.reduce is None else self.reduce(mlp))
        if pipe is None:
            rows = h.index_select(0, keep)
        else:
            passed = pipe.pass_on(h, keep)
            if passed is None:  # a later stage: stage 0 computes the logits
                return h.new_empty(0, 0, dtype=torch.float32)
            rows = passed
        return self.lm_head(self._rms_norm(rows, self.norm)).float()


def _on(t: Any, device: torch.device | None) -> Any:
    """A weight (or ``None``) as a detached tensor of its own on ``device``, or as it is."""
    if t is None:
        return None
    t = t.detach()
    return t.contiguous() if device is None else t.to(device).contiguous()


def _rows(bias: Any, rows: slice, device: torch.device | None) -> torch.Tensor | None:
    return None if bias is None else _on(bias[rows], device)
