"""BM25 over retrieval units, with bm25s.

bm25s scores a query with sparse matrix algebra instead of rank_bm25's per-document Python loop
(50-100x faster per query); rank_bm25 stays as the reference the tests compare against.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class LexicalConfig:
    """BM25 settings."""

    k1: float = 1.5
    """Term-frequency saturation."""
    b: float = 0.75
    """Length normalisation."""
    stopwords: str = "en"
    """bm25s stopword list ('en') or '' for none."""


class BM25Index:
    """BM25 over unit texts; rebuilt lazily after the corpus changes."""

    def __init__(self, config: LexicalConfig | None = None) -> None:
        self.config = config or LexicalConfig()
        self._model: object | None = None
        self._size = 0
        self._stale = True

    def invalidate(self) -> None:
        """Mark the index stale (documents were added or deleted)."""
        self._model = None
        self._stale = True

    def _tokenize(self, texts: Sequence[str]) -> object:
        import bm25s

        return bm25s.tokenize(
            list(texts), stopwords=self.config.stopwords or None, show_progress=False
        )

    def build(self, unit_texts: Sequence[str]) -> None:
        """Index ``unit_texts`` (one BM25 document per unit)."""
        import bm25s

        self._size = len(unit_texts)
        self._stale = False
        if not unit_texts:
            self._model = None
            return
        tokens = self._tokenize(unit_texts)
        if not tokens.vocab:  # type: ignore[attr-defined]
            # No unit has a BM25 term (e.g. only numbers of one digit or emoji): bm25s cannot
            # index an empty vocabulary, and every score is zero anyway.
            self._model = None
            return
        model = bm25s.BM25(k1=self.config.k1, b=self.config.b)
        model.index(tokens, show_progress=False)
        self._model = model

    @property
    def ready(self) -> bool:
        return not self._stale

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every unit for ``query`` (zeros when no query term is known)."""
        import bm25s

        if self._model is None:
            return np.zeros(self._size, np.float32)
        terms = bm25s.tokenize(
            [query],
            stopwords=self.config.stopwords or None,
            return_ids=False,
            show_progress=False,
        )[0]
        if not terms:
            return np.zeros(self._size, np.float32)
        return np.asarray(self._model.get_scores(terms), dtype=np.float32)  # type: ignore[attr-defined]
