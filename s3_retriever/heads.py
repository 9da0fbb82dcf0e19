"""Which attention heads score, and the checks that they exist and have SAEs.

A retriever takes its config's heads, else the SAE bundle's measured choice, else every query
head of one early layer. Scores are read per field: (layer, KV head) of each retrieval head.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

from s3_retriever.errors import SAEError
from s3_retriever.index.postings import Field
from s3_retriever.sae.bundle import SAEBundle

Head = tuple[int, int]
"""(layer, query head)."""


def fallback_heads(n_layers: int, n_heads: int) -> tuple[Head, ...]:
    # With no measured choice for a model, every query head of one early layer: the head sweep
    # of docs/sae.md (scripts/sweep_heads.py) found SmolLM2's best heads in layers 5 and 8 of 30.
    layer = max(1, n_layers // 6)
    return tuple((layer, head) for head in range(n_heads))


def check_heads(heads: Sequence[Head], n_layers: int, n_heads: int) -> tuple[Head, ...]:
    """``heads`` as a tuple; ValueError for one the model does not have."""
    for layer, head in heads:
        if not (0 <= layer < n_layers and 0 <= head < n_heads):
            raise ValueError(
                f"retrieval head ({layer}, {head}) does not exist: the model has {n_layers} "
                f"layers of {n_heads} query heads"
            )
    return tuple(heads)


def fields_of(heads: Sequence[Head], kv_group: int) -> tuple[Field, ...]:
    """The (layer, KV head) fields the heads read, sorted."""
    return tuple(sorted({(layer, head // kv_group) for layer, head in heads}))


def check_saes(bundle: SAEBundle, fields: Sequence[Field], n_kv: int) -> None:
    """Refuse layers without an SAE; warn about fields whose KV head no SAE was trained on."""
    layers = sorted({layer for layer, _ in fields})
    missing = [layer for layer in layers if layer not in bundle.saes]
    if missing:
        raise SAEError(
            f"No SAE for retrieval layer(s) {missing}; the bundle has layers "
            f"{list(bundle.layers)}. Train SAEs for them (`s3-retriever train-sae`) or "
            f"set store_postings=False to use the exact scorer only."
        )
    trained_on = bundle.info.get("key_kv_heads") or {}
    untrained = [
        (layer, kv) for layer, kv in fields if kv not in bundle.trained_kv_heads(layer, n_kv)
    ]
    if untrained:
        warnings.warn(
            f"KV heads {untrained} (layer, KV head) are encoded by SAEs trained on other heads "
            f"({trained_on}): retrieval through the SAE will be poor there. Use retrieval heads "
            f"that read the trained KV heads, or train SAEs with --key-heads all.",
            stacklevel=3,
        )
