"""Spans -> hits: evidence records with exact character offsets and their component scores."""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from s3_retriever.index.corpus import Corpus
from s3_retriever.search.units import COMPONENT_NAMES, Components


@dataclass(frozen=True)
class Hit:
    """One evidence span. ``text == source[start_char:end_char]`` exactly."""

    doc_id: str
    """Id of the document the span comes from."""
    start_char: int
    """Start offset in the document's text."""
    end_char: int
    """End offset (exclusive) in the document's text."""
    text: str
    """The span's text."""
    score: float
    """The score that ranked it (fused score in hybrid mode)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The document's metadata."""
    scores: dict[str, float] = field(default_factory=dict)
    """Component scores: ``s3`` and/or ``bm25``."""
    relevance: float = 0.0
    """Normalised relevance in [0, 1]: the best component score of the span's units over that
    component's best unit for the question (:mod:`s3_retriever.search.relevance`)."""

    @property
    def id(self) -> str:
        """Deterministic span id ``doc_id:start:end``, unique within one result list."""
        return f"{self.doc_id}:{self.start_char}:{self.end_char}"


def build_hits(
    runs: Sequence[list[int]],
    corpus: Corpus,
    ranked_score: np.ndarray,
    components: Components,
    relevance: np.ndarray,
) -> list[Hit]:
    """One hit per run of adjacent units, scored by its best unit."""
    hits = []
    for run in runs:
        row = int(corpus.unit_doc[run[0]])
        start = int(corpus.unit_chars[run[0], 0])
        end = int(corpus.unit_chars[run[-1], 1])
        parts = {
            name: float(values[run].max())
            for name, values in components.items()
            if name in COMPONENT_NAMES
        }
        hits.append(
            Hit(
                doc_id=corpus.doc_ids[row],
                start_char=start,
                end_char=end,
                text=corpus.texts[row][start:end],
                score=float(ranked_score[run].max()),
                # A deep copy: changing hit.metadata must not change the index.
                metadata=copy.deepcopy(corpus.metadatas[row]),
                scores=parts,
                relevance=float(relevance[run].max()),
            )
        )
    return hits


def in_order(hits: list[Hit], order: str) -> list[Hit]:
    """``hits`` (in document order) as ``order`` asks: ``document`` keeps them, ``score`` sorts
    best first (ties keep document order)."""
    return sorted(hits, key=lambda hit: -hit.score) if order == "score" else hits
