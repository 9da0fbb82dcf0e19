"""Vectors to train and measure SAEs on: keys and values captured by the scan, and questions.

Keys come from the same scan the index uses (:mod:`s3_retriever.model.scan`); values are tapped
from the value projection by a hook. Captures are (tokens * KV heads, head_dim), token-major.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import torch

from s3_retriever.model.loading import decoder_layers
from s3_retriever.model.scan import ScanConfig, Scanner, TokenizedText, tokenize


@dataclass
class CapturedVectors:
    """Pre-RoPE keys and queries (and values when asked) gathered from a corpus, per layer."""

    keys: dict[int, torch.Tensor]
    """layer -> (tokens * kv_heads, head_dim) keys."""
    queries: dict[int, torch.Tensor]
    """layer -> (tokens, query_heads, head_dim) queries."""
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    """layer -> (tokens * kv_heads, head_dim) values; empty unless values were asked for."""


class _ValueTap:
    """Computes ``v_proj`` of each instrumented layer alongside the scanner's ``k_proj`` capture.

    ``v_proj`` reads the same normed hidden state as ``k_proj`` but runs after it, past the point
    where the scanner stops the forward pass; a pre-hook on ``k_proj`` applies ``v_proj`` to that
    input first. The scanner must run one chunk per forward pass, so the tap's single row is the
    chunk just yielded.
    """

    def __init__(self, model: Any, layers: Sequence[int]) -> None:
        self._attention = {layer: decoder_layers(model)[layer].self_attn for layer in layers}
        self._latest: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> _ValueTap:
        for layer, attn in self._attention.items():
            self._handles.append(attn.k_proj.register_forward_pre_hook(self._hook(layer)))
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, layer: int) -> Any:
        v_proj = self._attention[layer].v_proj

        def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            self._latest[layer] = v_proj(inputs[0]).detach()

        return hook

    def take(self, layer: int, n_tokens: int, head_dim: int) -> torch.Tensor:
        """The last chunk's ``n_tokens`` values at ``layer``, as (n_tokens * kv_heads, head_dim)."""
        batch = self._latest.pop(layer)
        if batch.shape[0] != 1 or not 0 <= batch.shape[1] - n_tokens <= 1:
            raise RuntimeError(
                f"value capture expected one chunk of {n_tokens} tokens (plus BOS), got a batch "
                f"of shape {tuple(batch.shape[:2])}; scan with batch_size=1"
            )
        return batch[0, batch.shape[1] - n_tokens :].reshape(-1, head_dim)


def collect_vectors(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    max_tokens: int,
    scan_config: ScanConfig | None = None,
    device: str | torch.device | None = None,
    want_values: bool = False,
) -> CapturedVectors:
    """Scan ``texts`` (up to ``max_tokens`` tokens) and keep every key and query at ``layers``.

    The scan runs where ``model`` is; the vectors are kept on ``device`` (default: the model's
    device), so a GPU scan can feed GPU training without a round trip through the CPU.
    ``want_values`` also keeps the values (``v_proj`` outputs); chunks then run one per forward
    pass. Memory is bounded by ``max_tokens``: vectors are kept in bf16 as they stream in.
    """
    keep_on = torch.device(device) if device is not None else next(model.parameters()).device
    docs: list[TokenizedText] = []
    total = 0
    for text in texts:
        doc = tokenize(tokenizer, text)
        if len(doc) == 0:
            continue
        # The last text is cut at the cap: one long file must not lift the memory bound.
        keep = min(len(doc), max_tokens - total)
        if keep < len(doc):
            doc = TokenizedText(doc.input_ids[:keep], doc.starts[:keep], doc.ends[:keep])
        docs.append(doc)
        total += len(doc)
        if total >= max_tokens:
            break
    if want_values:
        # The value tap is a hook on k_proj: only the model's own (hooked) forward fires it.
        scan_config = replace(scan_config or ScanConfig(), batch_size=1, fused_forward=False)
    scanner = Scanner(model, layers, layers, scan_config, bos_token_id=tokenizer.bos_token_id)
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    queries: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    values: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers} if want_values else {}
    tap = _ValueTap(model, layers if want_values else ())
    with tap:
        for capture in scanner.scan(docs, want_queries=True, desc="collecting"):
            for layer in layers:
                k = capture.keys[layer]
                keys[layer].append(k.reshape(-1, k.shape[-1]).to(keep_on, torch.bfloat16))
                queries[layer].append(capture.queries[layer].to(keep_on, torch.bfloat16))
                if want_values:
                    v = tap.take(layer, k.shape[0], k.shape[-1])
                    values[layer].append(v.to(keep_on, torch.bfloat16))
    return CapturedVectors(
        keys={layer: torch.cat(parts).float() for layer, parts in keys.items()},
        queries={layer: torch.cat(parts).float() for layer, parts in queries.items()},
        values={layer: torch.cat(parts).float() for layer, parts in values.items()},
    )


def split_held_out(
    vectors: torch.Tensor, held_out: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, held-out) split of a (n, d) tensor."""
    order = np.random.default_rng(seed).permutation(vectors.shape[0])
    cut = int(len(order) * (1 - held_out))
    return vectors[order[:cut]], vectors[order[cut:]]


def retrieval_kv_heads(
    retrieval_heads: Sequence[tuple[int, int]], kv_group: int
) -> dict[int, tuple[int, ...]]:
    """layer -> the KV heads its retrieval (query) heads read under GQA (``head // kv_group``)."""
    found: dict[int, set[int]] = {}
    for layer, head in retrieval_heads:
        found.setdefault(layer, set()).add(head // kv_group)
    return {layer: tuple(sorted(heads)) for layer, heads in found.items()}


def select_kv_heads(vectors: torch.Tensor, n_kv: int, heads: Sequence[int]) -> torch.Tensor:
    """The rows of KV heads ``heads`` in a (tokens * n_kv, head_dim) capture (token-major)."""
    if len(heads) == n_kv:
        return vectors
    if vectors.shape[0] % n_kv:
        raise ValueError(f"{vectors.shape[0]} rows are not a whole number of {n_kv} KV heads")
    by_token = vectors.reshape(-1, n_kv, vectors.shape[-1])
    return by_token[:, list(heads)].reshape(-1, vectors.shape[-1])


def question_queries(
    model: Any, tokenizer: Any, questions: Sequence[str], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """layer -> (question tokens, query heads, head_dim) pre-RoPE queries of ``questions``."""
    if not questions:
        return {}
    scanner = Scanner(model, (), layers, bos_token_id=tokenizer.bos_token_id)
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for question in questions:
        ids = tokenize(tokenizer, question).input_ids
        if len(ids) == 0:
            continue
        projected = scanner.project_queries(ids)
        for layer in layers:
            parts[layer].append(projected[layer])
    return {layer: torch.cat(p) for layer, p in parts.items()}
