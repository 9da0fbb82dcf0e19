"""S3-Hybrid: fusing S3 unit scores with BM25 unit scores (S3 step 6).

The paper takes the union of S3 spans, BM25 hits and the lead/tail of the context. A z-scored
sum of the two score lists and reciprocal-rank fusion are offered too, so the evaluation harness
can compare them; docs/method.md (step 5) gives the ablation that made ``rrf`` the default
(docs/results/ablations/ablation_fusion*.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

FusionRule = Literal["zsum", "rrf", "union"]
FUSION_RULES: tuple[str, ...] = ("zsum", "rrf", "union")


@dataclass(frozen=True)
class HybridConfig:
    """How S3 and BM25 are combined under one token budget."""

    fusion: FusionRule = "rrf"
    """``rrf``: reciprocal-rank fusion; ``zsum``: weighted sum of z-scores; ``union``: the
    paper's union, taking the two rankings in turn. RRF is the default because it led on the
    tuning questions of both tasks at 512-2,048 tokens (HotpotQA recall@1024 0.862 against 0.825
    for zsum and 0.782 for union; QMSum 0.279 against 0.244 and 0.259;
    docs/results/ablations/)."""
    s3_weight: float = 1.0
    """Weight of the S3 scores (zsum) or of the S3 ranking (rrf)."""
    bm25_weight: float = 1.0
    """Weight of the BM25 scores (zsum) or of the BM25 ranking (rrf)."""
    rrf_k: int = 60
    """RRF constant, as in LangChain's EnsembleRetriever."""
    lead_tokens: int = 0
    """Tokens from the start of every document always included (taken from the budget)."""
    tail_tokens: int = 0
    """Tokens from the end of every document always included (taken from the budget)."""

    def __post_init__(self) -> None:
        if self.fusion not in FUSION_RULES:
            raise ValueError(
                f"fusion must be one of {', '.join(FUSION_RULES)}; got {self.fusion!r}"
            )
        if self.lead_tokens < 0 or self.tail_tokens < 0:
            raise ValueError("lead_tokens and tail_tokens must not be negative")


def zscore(values: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """(x - mean) / std over the masked entries; zeros where the spread is zero."""
    pool = values if mask is None else values[mask]
    if pool.size == 0:
        return np.zeros_like(values, dtype=np.float64)
    spread = float(pool.std())
    if spread == 0.0:
        return np.zeros_like(values, dtype=np.float64)
    return (values - float(pool.mean())) / spread


def rank_order(scores: np.ndarray, mask: np.ndarray | None = None) -> np.ndarray:
    """Unit ids by descending score, ties broken by position (stable and deterministic)."""
    ids = np.arange(len(scores)) if mask is None else np.flatnonzero(mask)
    return ids[np.lexsort((ids, -scores[ids]))]


def fuse(
    s3: np.ndarray, bm25: np.ndarray, config: HybridConfig, mask: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Fused ranking of units: (unit ids best first, fused score of every unit)."""
    if config.fusion == "zsum":
        fused = config.s3_weight * zscore(s3, mask) + config.bm25_weight * zscore(bm25, mask)
        return rank_order(fused, mask), fused
    s3_rank, bm25_rank = rank_order(s3, mask), rank_order(bm25, mask)
    if config.fusion == "rrf":
        fused = np.zeros(len(s3), np.float64)
        fused[s3_rank] += config.s3_weight / (config.rrf_k + 1 + np.arange(len(s3_rank)))
        fused[bm25_rank] += config.bm25_weight / (config.rrf_k + 1 + np.arange(len(bm25_rank)))
        return rank_order(fused, mask), fused
    # union: alternate between the two rankings, as the paper's union fills one budget.
    order: list[int] = []
    seen: set[int] = set()
    for a, b in zip(s3_rank.tolist(), bm25_rank.tolist(), strict=True):
        for unit in (a, b):
            if unit not in seen:
                seen.add(unit)
                order.append(unit)
    fused = np.zeros(len(s3), np.float64)
    fused[np.asarray(order, dtype=np.int64)] = 1.0 / (1.0 + np.arange(len(order)))
    return np.asarray(order, dtype=np.int64), fused
