"""Position scores -> unit scores: the evidence each unit (sentence or line) holds.

``s3`` smooths the raw position scores within documents and gives each unit the best smoothed
score of its tokens; ``bm25`` scores the unit texts. A search keeps both arrays by name.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from s3_retriever.index.index import Index
from s3_retriever.search.spans import SpanConfig, smooth, unit_scores
from s3_retriever.search.sparse import (
    SparseScores,
    smooth_sparse,
    unit_scores_from_raw,
    unit_scores_sparse,
)

Components = dict[str, Any]
"""``s3_positions`` (smoothed position scores: an array, or :class:`SparseScores` when the
search read only some positions), ``s3`` and ``bm25`` (arrays of one score per unit)."""

COMPONENT_NAMES = ("s3", "bm25")
"""The unit scores a hit reports."""


def s3_components(
    raw: np.ndarray | SparseScores, index: Index, spans: SpanConfig, positions: bool = True
) -> Components:
    """Smoothed position scores and the unit scores they give; sparse scores stay sparse, so
    this costs what the search read (:mod:`.sparse`). ``positions=False`` (the hybrid ranks
    units only) lets sparse scores skip smoothing every position."""
    if isinstance(raw, SparseScores):
        if not positions:
            return {"s3": unit_scores_from_raw(raw, index.corpus, spans.smooth_width)}
        sparse = smooth_sparse(raw, index.corpus, spans.smooth_width)
        return {"s3_positions": sparse, "s3": unit_scores_sparse(sparse, index.corpus)}
    smoothed = smooth(raw, index.corpus, spans.smooth_width)
    return {"s3_positions": smoothed, "s3": unit_scores(smoothed, index.corpus)}


def bm25_components(query: str, index: Index) -> Components:
    """BM25 score of every unit."""
    return {"bm25": index.bm25_scores(query)}
