"""A leaner truncated forward pass for Llama-family decoders on the CPU.

The model's own forward (:meth:`Scanner._forward` with hooks) is exact but spends, on a CPU,
about as long in element-wise passes as in its matmuls: RMSNorm upcasts to float32 in five
passes, rotary embeddings build ``rotate_half`` with a ``cat`` and a ``neg`` for queries and keys
apart, residual adds and the gated MLP each take their own pass over the activations
(``benchmarks/cpu_indexing.py`` profiles the scan). This module runs the same layers with fewer
passes over memory:

- one matmul for the query, key and value projections, and one for the MLP's gate and up;
- ``rotate_half`` folded into extra projection rows (it is a signed permutation of each head's
  dimensions, so ``rotate_half(x @ W.T) == x @ (P W).T`` exactly), which turns the rotary
  embedding into one ``addcmul`` over queries and keys together;
- residual adds inside the output and down projections (``addmm``).

The captured projections are the pre-RoPE ``q_proj`` / ``k_proj`` outputs the hooked forward
captures; rounding differs (bf16 products are summed in another order), which
``tests/model/test_fused_forward.py`` bounds. Padding needs no mask: rows are right-padded and
attention is causal, so a real token never sees a pad.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F

from s3_retriever.model.loading import decoder_layers

FUSED_MODEL_TYPES = ("llama", "mistral", "qwen2")
"""Architectures whose decoder layers this module reproduces (SiLU-gated MLP, RMSNorm, RoPE)."""


@dataclass(frozen=True)
class _LayerWeights:
    qkv: torch.Tensor
    """Rows: queries and keys, the same rotated by ``rotate_half``, then values."""
    qkv_bias: torch.Tensor | None
    input_norm: torch.Tensor
    post_norm: torch.Tensor
    o_t: torch.Tensor
    """Output projection, transposed for ``addmm``."""
    gate_up: torch.Tensor
    down_t: torch.Tensor


def _rotate_rows(weight: torch.Tensor, head_dim: int) -> torch.Tensor:
    """Rows of ``rotate_half`` applied to each head's outputs: ``[-second half, first half]``."""
    heads = weight.reshape(-1, 2, head_dim // 2, *weight.shape[1:])
    return torch.cat([-heads[:, 1], heads[:, 0]], dim=1).reshape(weight.shape)


def fused_unsupported_reason(model: Any, max_width: int) -> str | None:
    """Why :class:`FusedDecoder` cannot reproduce ``model`` (None when it can)."""
    cfg = model.config
    if getattr(cfg, "model_type", None) not in FUSED_MODEL_TYPES:
        return f"model type {getattr(cfg, 'model_type', None)!r} is not one of {FUSED_MODEL_TYPES}"
    if getattr(cfg, "hidden_act", "silu") != "silu":
        return f"activation {cfg.hidden_act!r} is not silu"
    window = getattr(cfg, "sliding_window", None)
    if window is not None and getattr(cfg, "use_sliding_window", True) and window < max_width:
        return f"a sliding window of {window} tokens is shorter than a chunk"
    base = getattr(model, "model", model)
    if not hasattr(base, "rotary_emb") or not hasattr(base, "embed_tokens"):
        return "the model has no rotary_emb / embed_tokens"
    for layer in decoder_layers(model):
        attn, mlp = getattr(layer, "self_attn", None), getattr(layer, "mlp", None)
        names = ("q_proj", "k_proj", "v_proj", "o_proj")
        if attn is None or mlp is None or not all(hasattr(attn, n) for n in names):
            return "a layer lacks the Llama attention projections"
        if not all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj")):
            return "a layer lacks the gated MLP"
        if any(getattr(m, "bias", None) is not None for m in (attn.o_proj, *mlp.children())):
            return "the output or MLP projections have biases"
        for norm in (layer.input_layernorm, layer.post_attention_layernorm):
            if not hasattr(norm, "weight") or not hasattr(norm, "variance_epsilon"):
                return "a layer norm is not an RMSNorm"
        if getattr(attn, "q_norm", None) is not None or getattr(attn, "k_norm", None) is not None:
            return "attention normalises queries or keys"
    return None


class FusedDecoder:
    """The first ``depth`` decoder layers of a Llama-family model, with fewer memory passes.

    Weights are copied (once per model and depth, shared through :func:`fused_decoder`), so the
    scan reads what the model held when this was built.
    """

    def __init__(self, model: Any, depth: int) -> None:
        base = getattr(model, "model", model)
        self._embed = base.embed_tokens
        self._rotary = base.rotary_emb
        layers = decoder_layers(model)
        attn = layers[0].self_attn
        cfg = model.config
        self.head_dim = int(
            getattr(attn, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        )
        self.n_heads = int(cfg.num_attention_heads)
        self.n_kv_heads = int(getattr(cfg, "num_key_value_heads", None) or self.n_heads)
        self.scaling = float(getattr(attn, "scaling", self.head_dim**-0.5))
        self.eps = float(layers[0].input_layernorm.variance_epsilon)
        self.depth = depth
        self.weights = [self._pack(layer) for layer in list(layers)[: depth + 1]]

    def _pack(self, layer: Any) -> _LayerWeights:
        attn, mlp = layer.self_attn, layer.mlp
        with torch.no_grad():
            qk = torch.cat([attn.q_proj.weight, attn.k_proj.weight])
            qkv = torch.cat([qk, _rotate_rows(qk, self.head_dim), attn.v_proj.weight])
            biases = [getattr(attn, n).bias for n in ("q_proj", "k_proj", "v_proj")]
            qkv_bias = None
            if any(b is not None for b in biases):
                parts = [
                    b if b is not None else torch.zeros(p.weight.shape[0], dtype=qkv.dtype)
                    for b, p in zip(biases, (attn.q_proj, attn.k_proj, attn.v_proj), strict=True)
                ]
                qk_bias = torch.cat(parts[:2])
                qkv_bias = torch.cat([qk_bias, _rotate_rows(qk_bias, self.head_dim), parts[2]])
            return _LayerWeights(
                qkv=qkv.contiguous(),
                qkv_bias=qkv_bias,
                input_norm=layer.input_layernorm.weight.detach(),
                post_norm=layer.post_attention_layernorm.weight.detach(),
                o_t=attn.o_proj.weight.t().contiguous(),
                gate_up=torch.cat([mlp.gate_proj.weight, mlp.up_proj.weight]).contiguous(),
                down_t=mlp.down_proj.weight.t().contiguous(),
            )

    def _norm(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        scale = torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + self.eps)
        return x * scale.to(x.dtype) * weight

    @torch.inference_mode()
    def forward(
        self, input_ids: torch.Tensor, key_layers: tuple[int, ...], query_layers: tuple[int, ...]
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """Pre-RoPE (keys, queries) per layer, flat: (rows, width, heads * head_dim)."""
        rows, width = input_ids.shape
        q_width, k_width = self.n_heads * self.head_dim, self.n_kv_heads * self.head_dim
        qk_heads = self.n_heads + self.n_kv_heads
        qk_width = q_width + k_width
        last = max((*key_layers, *query_layers))
        x = self._embed(input_ids)
        positions = torch.arange(width, device=input_ids.device)[None]
        cos, sin = (t[0, :, None, :] for t in self._rotary(x, positions))
        keys: dict[int, torch.Tensor] = {}
        queries: dict[int, torch.Tensor] = {}
        for index, w in enumerate(self.weights[: last + 1]):
            h = self._norm(x, w.input_norm)
            if index == last:
                # Only the projections the caller keeps: [queries | keys] rows of the packed matmul.
                bias = None if w.qkv_bias is None else w.qkv_bias[:qk_width]
                proj = F.linear(h, w.qkv[:qk_width], bias)
            else:
                proj = F.linear(h, w.qkv, w.qkv_bias)
            if index in query_layers:
                queries[index] = proj[..., :q_width].contiguous()
            if index in key_layers:
                keys[index] = proj[..., q_width:qk_width].contiguous()
            if index == last:
                break
            shape = (rows, width, qk_heads, self.head_dim)
            plain = proj[..., :qk_width].view(shape)
            rotated = proj[..., qk_width : 2 * qk_width].view(shape)
            roped = torch.addcmul(plain * cos, rotated, sin).transpose(1, 2)
            values = proj[..., 2 * qk_width :].view(rows, width, self.n_kv_heads, self.head_dim)
            attended = F.scaled_dot_product_attention(
                roped[:, : self.n_heads],
                roped[:, self.n_heads :],
                values.transpose(1, 2),
                is_causal=True,
                scale=self.scaling,
                enable_gqa=self.n_heads != self.n_kv_heads,
            )
            flat = x.reshape(rows * width, -1)
            mixed = attended.transpose(1, 2).reshape(rows * width, q_width)
            x = torch.addmm(flat, mixed, w.o_t).view(x.shape)
            gate, up = F.linear(self._norm(x, w.post_norm), w.gate_up).chunk(2, dim=-1)
            hidden = F.silu(gate).mul_(up).reshape(rows * width, -1)
            x = torch.addmm(x.reshape(rows * width, -1), hidden, w.down_t).view(x.shape)
        return keys, queries


_CACHE: weakref.WeakKeyDictionary[Any, dict[int, FusedDecoder]] = weakref.WeakKeyDictionary()


def fused_decoder(model: Any, depth: int) -> FusedDecoder:
    """The :class:`FusedDecoder` of ``model`` up to layer ``depth``, built once and shared."""
    per_depth = _CACHE.setdefault(model, {})
    if depth not in per_depth:
        per_depth[depth] = FusedDecoder(model, depth)
    return per_depth[depth]
