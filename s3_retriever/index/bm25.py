"""BM25 over retrieval units, kept current as documents are added and deleted.

Scores are bm25s's (its default Lucene variant: ``idf * tf / (tf + k1 * (1 - b + b * dl /
avgdl))`` with ``idf = log(1 + (N - df + 0.5) / (df + 0.5))``, terms from ``bm25s.tokenize``),
but the index is incremental: each commit tokenizes only its own units into a new segment of
postings (term -> units, term frequencies), and a query computes the scores of its terms from the
postings with the corpus's current N, df and average length. bm25s precomputes every (term, unit)
score, so any addition changes every score and meant a full rebuild on the next query
(docs/performance.md: the first query after an add cost 4.2x the next). Segments are merged as
they accumulate (at most about log2 of the units of them); a deletion filters the postings by a
unit mask without tokenizing again. tests/index/test_bm25.py checks the scores against bm25s
rebuilt from scratch and against rank_bm25.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Sequence
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


@dataclass
class _Segment:
    """Postings of consecutive units, grouped by term: term t's units are
    ``units[starts[t]:starts[t + 1]]`` (global unit ids, ascending) with frequencies ``tfs``."""

    starts: np.ndarray
    units: np.ndarray
    tfs: np.ndarray

    @classmethod
    def of(cls, terms: np.ndarray, units: np.ndarray, tfs: np.ndarray, n_terms: int) -> _Segment:
        order = np.lexsort((units, terms))
        counts = np.bincount(terms, minlength=n_terms)
        starts = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        return cls(starts, units[order].astype(np.int64), tfs[order].astype(np.int32))

    @property
    def size(self) -> int:
        return len(self.units)

    def triples(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(term, unit, tf) of every posting."""
        counts = np.diff(self.starts)
        return np.repeat(np.arange(len(counts)), counts), self.units, self.tfs

    def postings(self, term: int) -> tuple[np.ndarray, np.ndarray]:
        if term + 1 >= len(self.starts):
            return self.units[:0], self.tfs[:0]
        lo, hi = int(self.starts[term]), int(self.starts[term + 1])
        return self.units[lo:hi], self.tfs[lo:hi]


class BM25Index:
    """Incremental BM25 over unit texts, one BM25 document per unit.

    :meth:`add` indexes new units (appended after the existing ones), :meth:`keep` drops units,
    :meth:`scores` scores every unit. :meth:`build` indexes a whole corpus at once; an index
    marked stale by :meth:`invalidate` (after a load) is rebuilt by :meth:`ensure` on its first
    query. Safe to query from several threads while no thread writes.
    """

    def __init__(self, config: LexicalConfig | None = None) -> None:
        self.config = config or LexicalConfig()
        self._build_lock = threading.Lock()
        self._vocab: dict[str, int] = {}
        self._df = np.zeros(0, np.int64)
        self._lengths = np.zeros(0, np.int64)
        self._segments: list[_Segment] = []
        self._stale = False

    # ------------------------------------------------------------------ state
    @property
    def ready(self) -> bool:
        """False after :meth:`invalidate` until the next :meth:`build`."""
        return not self._stale

    @property
    def n_units(self) -> int:
        return len(self._lengths)

    @property
    def n_segments(self) -> int:
        return len(self._segments)

    def invalidate(self) -> None:
        """Mark the index stale: the next :meth:`ensure` rebuilds it from the unit texts."""
        self._stale = True

    def ensure(self, unit_texts: Callable[[], Sequence[str]]) -> None:
        """Build from ``unit_texts()`` if stale (once, even when several threads ask)."""
        if not self._stale:
            return
        with self._build_lock:
            if self._stale:
                self.build(unit_texts())

    # ------------------------------------------------------------------ writing
    def build(self, unit_texts: Sequence[str]) -> None:
        """Index ``unit_texts`` from scratch. Built aside and swapped in, then marked current
        last, so a reader that finds the index current never sees it half built."""
        fresh = BM25Index(self.config)
        fresh.add(unit_texts)
        self._vocab, self._df = fresh._vocab, fresh._df
        self._lengths, self._segments = fresh._lengths, fresh._segments
        self._stale = False

    def add(self, unit_texts: Sequence[str]) -> None:
        """Index ``unit_texts`` as the units after the current ones (tokenizing only them)."""
        if not unit_texts:
            return
        tokenized = self._tokenize(unit_texts)
        first = self.n_units
        lengths = np.fromiter((len(t) for t in tokenized), np.int64, len(tokenized))
        flat: list[int] = []
        vocab = self._vocab
        for tokens in tokenized:
            flat.extend(vocab.setdefault(token, len(vocab)) for token in tokens)
        n_terms = len(vocab)
        term_ids = np.asarray(flat, np.int64)
        unit_ids = np.repeat(np.arange(first, first + len(tokenized)), lengths)
        # One posting per distinct (unit, term): count repeats with one sort.
        key = np.unique(unit_ids * n_terms + term_ids, return_counts=True)
        units, terms = np.divmod(key[0], n_terms)
        df = np.zeros(n_terms, np.int64)
        df[: len(self._df)] = self._df
        df += np.bincount(terms, minlength=n_terms)
        self._df = df
        self._lengths = np.concatenate([self._lengths, lengths])
        self._segments.append(_Segment.of(terms, units, key[1], n_terms))
        self._merge_tail()

    def keep(self, keep_units: np.ndarray) -> None:
        """Drop the units where ``keep_units`` is False; the rest are renumbered in order."""
        if self._stale:
            return
        new_id = np.cumsum(keep_units) - 1
        n_terms = len(self._vocab)
        segments = []
        for segment in self._segments:
            terms, units, tfs = segment.triples()
            kept = keep_units[units]
            self._df -= np.bincount(terms[~kept], minlength=n_terms)
            if kept.any():
                segments.append(_Segment.of(terms[kept], new_id[units[kept]], tfs[kept], n_terms))
        self._segments = segments
        self._lengths = self._lengths[keep_units]

    def _merge_tail(self) -> None:
        """Merge the newest segment into the one before while it is at least half its size, so
        segment sizes at least halve from oldest to newest: O(log n) segments, each posting
        merged O(log n) times."""
        segments = self._segments
        while len(segments) > 1 and 2 * segments[-1].size >= segments[-2].size:
            newer, older = segments.pop(), segments.pop()
            parts = [older.triples(), newer.triples()]
            terms, units, tfs = (np.concatenate([p[i] for p in parts]) for i in range(3))
            segments.append(_Segment.of(terms, units, tfs, len(self._vocab)))

    def _tokenize(self, texts: Sequence[str]) -> list[list[str]]:
        import bm25s

        return bm25s.tokenize(
            list(texts),
            stopwords=self.config.stopwords or None,
            return_ids=False,
            show_progress=False,
        )

    # ------------------------------------------------------------------ reading
    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every unit for ``query`` (zeros when no query term is known).

        Computed as bm25s computes them (float32 term scores from a float64 length factor,
        summed in float32 in query-term order, a repeated query term counting again), so the
        two agree to float32 rounding.
        """
        n_units = self.n_units
        out = np.zeros(n_units, np.float32)
        if n_units == 0:
            return out
        config = self.config
        average = float(self._lengths.sum()) / n_units
        for token in self._tokenize([query])[0]:
            term = self._vocab.get(token)
            if term is None or self._df[term] == 0:
                continue
            df = int(self._df[term])
            idf = np.float32(math.log(1 + (n_units - df + 0.5) / (df + 0.5)))
            for segment in self._segments:
                units, tfs = segment.postings(term)
                if len(units) == 0:
                    continue
                tf = tfs.astype(np.float32)
                norm = config.k1 * ((1 - config.b) + config.b * self._lengths[units] / average)
                out[units] += (idf * (tf / (norm + tf))).astype(np.float32)
        return out
