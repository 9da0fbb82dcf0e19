"""Scores of every indexed position: for research scripts and a sharded search's merge.

:class:`PositionScoring` is mixed into :class:`s3_retriever.S3Retriever`; it reads the
attributes the facade sets (``index``, ``bundle``, ``kv_group``, ``config``, the question
encoder and the lock) and keeps these lower-level entry points out of the facade's module.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from s3_retriever.index.index import Index
from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.search.question import QuestionEncoder
from s3_retriever.search.scoring import index_logsumexp, score_index
from s3_retriever.search.settings import SearchSettings


class PositionScoring:
    """Question vectors, position scores and softmax normalisers of an index."""

    index: Index
    bundle: SAEBundle
    kv_group: int
    config: Any
    """A :class:`~s3_retriever.RetrieverConfig` (its ``search_settings()``)."""
    _questions: QuestionEncoder
    _lock: Any

    def question_vectors(
        self, query: str, search: SearchSettings | None = None
    ) -> dict[tuple[int, int], np.ndarray]:
        """Pre-RoPE query vectors of the question for every retrieval head."""
        return self._questions.vectors(query, search or self.config.search_settings())

    def score_positions(
        self, query: str, doc_mask: np.ndarray | None = None, search: SearchSettings | None = None
    ) -> np.ndarray:
        """Raw S3 score of every indexed token position for ``query`` (before smoothing)."""
        with self._lock.read():
            vectors = self.question_vectors(query, search)
            return self.score_question_vectors(vectors, doc_mask, search)

    def score_question_vectors(
        self,
        head_queries: Mapping[tuple[int, int], np.ndarray],
        doc_mask: np.ndarray | None = None,
        search: SearchSettings | None = None,
        row_lse: Mapping[tuple[int, int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """:meth:`score_positions` for question vectors already computed (the index search
        alone); ``row_lse``: see :func:`s3_retriever.search.scoring.score_positions`."""
        scoring = (search or self.config.search_settings()).scoring
        with self._lock.read():
            return score_index(
                self.index, head_queries, scoring, self.kv_group, self.bundle, doc_mask, row_lse
            )

    def question_logsumexp(
        self,
        head_queries: Mapping[tuple[int, int], np.ndarray],
        doc_mask: np.ndarray | None = None,
        search: SearchSettings | None = None,
    ) -> dict[tuple[int, int], np.ndarray]:
        """Each question row's softmax normaliser (:func:`.search.scoring.index_logsumexp`)."""
        scoring = (search or self.config.search_settings()).scoring
        with self._lock.read():
            return index_logsumexp(
                self.index, head_queries, scoring, self.kv_group, self.bundle, doc_mask
            )
