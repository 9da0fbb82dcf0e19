"""Position scores: how much a question attends to each indexed token.

Every scorer of :data:`~s3_retriever.search.scorers.SCORER_REGISTRY` shares one interface
(question vectors in, one score per global position out). Heads are averaged with equal weight.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from s3_retriever.index.index import Index
from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.postings import Field, Postings
from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.search.coverage import coverage_scores
from s3_retriever.search.scorers import (
    SCORER_REGISTRY,
    ExactScorer,
    HeadQueries,
    RowLSE,
    ScoringContext,
)
from s3_retriever.search.settings import SCORERS, ScorerName, ScoringConfig
from s3_retriever.search.spans import SpanConfig
from s3_retriever.search.sparse import SparseScores, head_mean

__all__ = [
    "SCORERS",
    "ScorerName",
    "ScoringConfig",
    "require_store",
    "index_logsumexp",
    "score_index",
    "score_index_coverage",
    "score_index_sparse",
    "score_positions",
]


def require_store(config: ScoringConfig, has_keys: bool, has_postings: bool) -> None:
    """Refuse a scorer whose store the index does not keep, saying which setting it needs."""
    reads = SCORER_REGISTRY[config.scorer].reads
    if reads == "keys" and not has_keys:
        raise ValueError(f"the {config.scorer} scorer needs store_keys=True when indexing")
    if reads == "postings" and not has_postings:
        raise ValueError(f"the {config.scorer} scorer needs store_postings=True when indexing")


def score_positions(
    head_queries: HeadQueries,
    config: ScoringConfig,
    n_positions: int,
    kv_group: int,
    key_stores: Mapping[Field, KeyStore],
    postings: Mapping[Field, Postings],
    bundle: SAEBundle,
    allowed: np.ndarray | None = None,
    row_lse: RowLSE | None = None,
) -> np.ndarray:
    """Score every position for one question: the mean over heads of the scorer's scores.

    Args:
        head_queries: (layer, query head) -> (question tokens, head_dim) pre-RoPE queries.
        kv_group: query heads per KV head (GQA); query head h reads KV head ``h // kv_group``.
        allowed: optional mask of candidate positions (metadata filters), applied before ranking.
        row_lse: every question row's softmax normaliser over a corpus this index is one shard
            of (see :func:`index_logsumexp`); the scores are then this shard's part of it.
    """
    total = np.zeros(n_positions, np.float32)
    if n_positions == 0 or not head_queries:
        return total
    context = ScoringContext(
        config, n_positions, kv_group, key_stores, postings, bundle, allowed, row_lse
    )
    for part in SCORER_REGISTRY[config.scorer].contributions(head_queries, context):
        total += part
    return total / len(head_queries)


def score_index(
    index: Index,
    head_queries: HeadQueries,
    config: ScoringConfig,
    kv_group: int,
    bundle: SAEBundle,
    doc_mask: np.ndarray | None = None,
    row_lse: RowLSE | None = None,
) -> np.ndarray:
    """Raw score of every position of ``index``; documents outside ``doc_mask`` score zero and
    cost nothing. ``row_lse`` as in :func:`score_positions`."""
    corpus = index.corpus
    return score_positions(
        head_queries,
        config,
        corpus.n_positions,
        kv_group,
        index.key_stores,
        index.postings,
        bundle,
        _allowed(index, doc_mask),
        row_lse,
    )


def index_logsumexp(
    index: Index,
    head_queries: HeadQueries,
    config: ScoringConfig,
    kv_group: int,
    bundle: SAEBundle,
    doc_mask: np.ndarray | None = None,
) -> dict[tuple[int, int], np.ndarray]:
    """Per head, each question row's softmax normaliser (log-sum-exp) over the candidates of
    ``index``: one shard's part of the ``row_lse`` of :func:`score_index` (over shards, the
    corpus's normaliser is ``np.logaddexp`` of theirs)."""
    if index.corpus.n_positions == 0 or not head_queries:
        return {h: np.full(len(q), -np.inf) for h, q in head_queries.items()}
    context = _index_context(index, config, kv_group, bundle, doc_mask)
    return SCORER_REGISTRY[config.scorer].row_logsumexp(head_queries, context)


def score_index_sparse(
    index: Index,
    head_queries: HeadQueries,
    config: ScoringConfig,
    kv_group: int,
    bundle: SAEBundle,
    doc_mask: np.ndarray | None = None,
) -> SparseScores | None:
    """:func:`score_index` as the positions the search read with their scores, when the search
    reads only some (the clustered exact search); None when the scores are dense."""
    scorer = SCORER_REGISTRY[config.scorer]
    n_positions = index.corpus.n_positions
    if not isinstance(scorer, ExactScorer) or n_positions == 0 or not head_queries:
        return None
    context = _index_context(index, config, kv_group, bundle, doc_mask)
    parts = scorer.sparse_contributions(head_queries, context)
    return None if parts is None else head_mean(parts, len(head_queries), n_positions)


def score_index_coverage(
    index: Index,
    head_queries: HeadQueries,
    config: ScoringConfig,
    kv_group: int,
    bundle: SAEBundle,
    spans: SpanConfig,
    doc_mask: np.ndarray | None = None,
) -> np.ndarray:
    """Unit scores by coverage pooling (``config.pooling == "coverage"``, :mod:`.coverage`)."""
    corpus = index.corpus
    if corpus.n_positions == 0 or not head_queries:
        return np.zeros(corpus.n_units, np.float32)
    scorer = SCORER_REGISTRY[config.scorer]
    if not isinstance(scorer, ExactScorer):  # ScoringConfig refuses this pairing already
        raise ValueError("pooling='coverage' needs the exact scorer (stored keys)")
    context = _index_context(index, config, kv_group, bundle, doc_mask)
    row_max = scorer.row_unit_max(head_queries, context, corpus)
    allowed = context.allowed
    n_candidates = corpus.n_positions if allowed is None else int(allowed.sum())
    return coverage_scores(
        row_max,
        corpus,
        n_candidates,
        config.coverage_window,
        config.coverage_transform,
        spans.within_paragraph,
        config.coverage_document,
    )


def _index_context(
    index: Index,
    config: ScoringConfig,
    kv_group: int,
    bundle: SAEBundle,
    doc_mask: np.ndarray | None,
) -> ScoringContext:
    """What a scorer reads of ``index``: its stores and the candidates ``doc_mask`` allows."""
    return ScoringContext(
        config,
        index.corpus.n_positions,
        kv_group,
        index.key_stores,
        index.postings,
        bundle,
        _allowed(index, doc_mask),
    )


def _allowed(index: Index, doc_mask: np.ndarray | None) -> np.ndarray | None:
    if doc_mask is None or doc_mask.all():
        return None
    return np.repeat(doc_mask, index.corpus.doc_token_count)
