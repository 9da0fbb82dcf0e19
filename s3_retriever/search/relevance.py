"""A normalised relevance in [0, 1] for every unit, and the floor below which a unit is no evidence.

Raw scores do not compare across questions or modes: S3 scores are attention mass (small numbers
whose scale depends on the heads and the corpus), BM25 scores are unbounded, and fused RRF scores
sit between 0.029 and 0.033 for relevant and irrelevant units alike. Relevance divides each
component (``s3``, ``bm25``) by its best value among the units the filters allow, so the best unit
of a component has relevance 1 and a unit with no evidence 0; a unit's relevance is its best
component. A span's relevance is the best of its units.

``SpanConfig.min_relevance`` (:mod:`.spans`) is the floor: units below it do not start spans, so
the budget is not padded with spans that carry no evidence (a heading such as "Preamble" with
``bm25 = 0`` and an S3 score near zero). The retriever then returns fewer spans, or fewer tokens,
than asked.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np

from s3_retriever.search.units import COMPONENT_NAMES


def unit_relevance(components: Mapping[str, np.ndarray], allowed: np.ndarray) -> np.ndarray:
    """Relevance in [0, 1] of every unit: its best component over that component's best.

    ``components`` maps component names (``s3``, ``bm25``) to unit scores; ``allowed`` is the
    boolean unit mask of the filters. Negative scores count as no evidence. Units outside the mask
    get 0.
    """
    return relevance_under(components, allowed, component_bests(components, allowed))


def component_bests(components: Mapping[str, np.ndarray], allowed: np.ndarray) -> dict[str, float]:
    """Each component's best unit score over the allowed units (0 when none is positive).

    A sharded index takes the largest of its shards' bests (each shard scores under the
    corpus-wide statistics, so its unit scores are those of one index).
    """
    return {
        name: float(_evidence(components[name], allowed).max(initial=0.0))
        for name in COMPONENT_NAMES
        if name in components
    }


def relevance_under(
    components: Mapping[str, np.ndarray], allowed: np.ndarray, bests: Mapping[str, float]
) -> np.ndarray:
    """:func:`unit_relevance` with each component's best given (``bests``, corpus-wide)."""
    relevance = np.zeros(len(allowed), dtype=np.float64)
    for name, best in bests.items():
        if best > 0.0:
            np.maximum(relevance, _evidence(components[name], allowed) / best, out=relevance)
    return relevance


def _evidence(scores: np.ndarray, allowed: np.ndarray) -> np.ndarray:
    return np.where(allowed, np.maximum(scores.astype(np.float64), 0.0), 0.0)


class FewerHitsWarning(UserWarning):
    """``retrieve`` returned fewer spans than ``top_k``; the message says why."""


def warn_fewer_hits(
    n_hits: int,
    top_k: int,
    tokens_used: int,
    token_budget: int,
    documents: tuple[int, int] | None,
    min_relevance: float,
) -> None:
    """Say why fewer than ``top_k`` spans came back: filters, a full budget, or no evidence.

    ``documents`` is (documents the filters pass, documents indexed), or ``None`` without filters.
    """
    facts = []
    if documents is not None:
        facts.append(f"the filters pass {documents[0]} of {documents[1]} documents")
    facts.append(f"the spans use {tokens_used} of token_budget={token_budget} tokens")
    why = "did not fit the budget"
    if min_relevance > 0:
        why = f"fell below the relevance floor spans.min_relevance={min_relevance:g} or {why}"
    warnings.warn(
        f"{n_hits} of top_k={top_k} spans returned ({'; '.join(facts)}): the other units {why}",
        FewerHitsWarning,
        stacklevel=4,
    )
