"""Search settings: everything a question is searched with, passable per call.

:class:`SearchSettings` gathers the query-time parts of a
:class:`~s3_retriever.config.RetrieverConfig` (scoring, spans, fusion, the question template). A
retriever searches with its own unless :meth:`S3Retriever.retrieve` is handed others, so an
evaluation can compare scorers or span settings on one shared index without changing it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

from s3_retriever.search.coverage import COVERAGE_TRANSFORMS
from s3_retriever.search.fusion import HybridConfig
from s3_retriever.search.spans import SpanConfig

ScorerName = Literal["exact", "aligned", "coactivation"]
SCORERS: tuple[str, ...] = ("exact", "aligned", "coactivation")
"""The position scorers (:mod:`s3_retriever.search.scorers` implements each)."""

POOLINGS: tuple[str, ...] = ("peak", "coverage")
"""How position attention becomes unit scores (:class:`ScoringConfig.pooling`)."""

Mode = Literal["hybrid", "s3", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "s3", "bm25")
"""``hybrid`` (S3 + BM25), ``s3`` (S3-Pure) or ``bm25``."""

Order = Literal["document", "score"]
ORDERS: tuple[str, ...] = ("document", "score")
"""Hits ``document``: by document, then position; ``score``: best first."""


@dataclass(frozen=True)
class ScoringConfig:
    """How a question is scored against the index."""

    scorer: ScorerName = "exact"
    """``exact`` (stored keys), ``aligned`` (SAE atoms picked by q.d_j) or ``coactivation``."""
    atoms_per_query: int = 2048
    """``aligned``: atoms each question token selects by ``q.d_j`` (clamped to the dictionary).
    On tuning questions, S3-Pure recall@1024 was 0.679 with 64 atoms, 0.726 with 256 and 0.837
    with all 2,048, against 0.821 for exact attention (docs/results/tune_atoms.json)."""
    center_queries: bool = True
    """Subtract the model's mean query vector per head before scoring (docs/method.md, settings
    table: mean recall@4 over heads 0.083 without centring, 0.138 with)."""
    temperature: float = 1.0
    """Softmax temperature on top of the usual 1/sqrt(head_dim)."""
    cluster_search_above: int | None = 65_536
    """``exact``: past this many candidate positions, each question row reads only the keys of
    its nearest clusters (:mod:`s3_retriever.index.clusters`); ``None`` always reads every key.
    Below it, reading every key takes tens of ms and is exact."""
    positions_per_row: int = 4096
    """``exact`` clustered search: keys each question row reads (whole clusters, at least this
    many). On a 100k-token index of HotpotQA haystacks (20 questions), 2,048 / 4,096 / 16,384
    retrieved 0.927 / 0.972 / 1.000 of the full search's text at a 1,024-token budget, with
    evidence recall 0.738 / 0.769 / 0.760 against the full search's 0.760
    (docs/results/bench_cluster_search.md)."""
    query_tokens: Literal["all", "content"] = "content"
    """Which question tokens vote: ``all``, or ``content`` (drop stop words and punctuation,
    whose attention is spread thin over the whole context). ``content`` found the needle at
    10/10 depths against 9/10, with HotpotQA recall equal within noise
    (docs/results/tune_query_tokens.json)."""

    pooling: Literal["peak", "coverage"] = "peak"
    """How position attention becomes unit scores: ``peak`` (the mean over question rows,
    smoothed, each unit's best position) or ``coverage`` (each row's best position near the
    unit, summed over rows: :mod:`s3_retriever.search.coverage`; ``exact`` scorer only)."""
    coverage_window: int = 128
    """``coverage``: tokens around a unit whose units lend it their per-row best (0: the unit
    alone)."""
    coverage_transform: Literal["log", "mass"] = "log"
    """``coverage``: what a row adds, ``log(1 + N a)`` (``log``) or its attention ``a``."""
    coverage_document: float = 0.0
    """``coverage``: weight of the unit's whole document's coverage added to its own (a
    document prior; 0: none)."""

    def __post_init__(self) -> None:
        if self.pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {', '.join(POOLINGS)}; got {self.pooling!r}")
        if self.pooling == "coverage" and self.scorer != "exact":
            raise ValueError("pooling='coverage' needs the exact scorer (stored keys)")
        if self.coverage_window < 0:
            raise ValueError("coverage_window must not be negative")
        if not 0 <= self.coverage_document < float("inf"):
            raise ValueError("coverage_document must be a finite weight of at least 0")
        if self.coverage_transform not in COVERAGE_TRANSFORMS:
            raise ValueError(
                f"coverage_transform must be one of {', '.join(COVERAGE_TRANSFORMS)}; "
                f"got {self.coverage_transform!r}"
            )
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}; got {self.scorer!r}")
        if self.atoms_per_query < 1:
            raise ValueError("atoms_per_query must be at least 1")
        if not 0 < self.temperature < float("inf"):  # also refuses NaN
            raise ValueError(f"temperature must be positive and finite, got {self.temperature}")
        if self.cluster_search_above is not None and self.cluster_search_above < 0:
            raise ValueError("cluster_search_above must be None or at least 0")
        if self.positions_per_row < 1:
            raise ValueError("positions_per_row must be at least 1")
        if self.query_tokens not in ("all", "content"):
            raise ValueError(f"query_tokens must be 'all' or 'content', got {self.query_tokens!r}")


@dataclass(frozen=True)
class SearchSettings:
    """How one question is searched: scorer, span shaping, fusion and the question template."""

    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """Which scorer turns a question into position scores."""
    spans: SpanConfig = field(default_factory=SpanConfig)
    """Smoothing, peak picking and span growth."""
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    """Fusion of S3 and BM25 under the budget."""
    query_template: str = "{question}"
    """How a question is written before the model reads it."""

    def __post_init__(self) -> None:
        if "{question}" not in self.query_template:
            raise ValueError("query_template must contain '{question}'")
