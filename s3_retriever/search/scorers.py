"""The position scorers behind one protocol, and the registry that names them.

A scorer turns the question vectors of every retrieval head into score arrays over the indexed
positions; :func:`s3_retriever.search.scoring.score_positions` adds them up and averages over
heads. Each scorer says which store it reads, so a missing store is reported before any work.

- ``exact`` (:mod:`.exact`, :mod:`.clustered`): attention over the stored int8 keys.
- ``aligned`` and ``coactivation`` (:mod:`.through_sae`): through the SAE postings.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np

from s3_retriever.index.corpus import Corpus
from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.postings import Field, Postings
from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.search.clustered import (
    clustered_exact_mass,
    clustered_exact_scores,
    clustered_row_unit_max,
)
from s3_retriever.search.coverage import RowUnitMax
from s3_retriever.search.exact import exact_row_logsumexp, exact_row_unit_max, exact_scores
from s3_retriever.search.settings import ScorerName, ScoringConfig
from s3_retriever.search.spans import position_units
from s3_retriever.search.sparse import unit_of_positions
from s3_retriever.search.through_sae import (
    aligned_row_logsumexp,
    aligned_scores,
    coactivation_scores,
)

HeadQueries = Mapping[tuple[int, int], np.ndarray]
"""(layer, query head) -> (question tokens, head_dim) pre-RoPE question vectors."""
RowLSE = Mapping[tuple[int, int], np.ndarray]
"""(layer, query head) -> each question row's softmax normaliser (log-sum-exp)."""

NO_SHARED_NORMALISER = (
    "the coactivation scorer normalises by a sum over the whole corpus that shards do not share; "
    "use the exact or aligned scorer with a sharded index"
)


@dataclass(frozen=True)
class ScoringContext:
    """What a scorer reads besides the question: the stores, the SAEs and the candidates."""

    config: ScoringConfig
    n_positions: int
    kv_group: int
    """Query heads per KV head (GQA); query head h reads KV head ``h // kv_group``."""
    key_stores: Mapping[Field, KeyStore]
    postings: Mapping[Field, Postings]
    bundle: SAEBundle
    allowed: np.ndarray | None = None
    """Optional mask of candidate positions (metadata filters), applied before ranking."""
    row_lse: RowLSE | None = None
    """Each row's softmax normaliser over a larger corpus this index is a shard of (from
    :meth:`Scorer.row_logsumexp` of every shard, added up); given, every key is read and each
    softmax divides by it, so the scores are this shard's part of that corpus's."""

    def field_of(self, layer: int, head: int) -> Field:
        return (layer, head // self.kv_group)

    def centred(self, layer: int, head: int, vectors: np.ndarray) -> np.ndarray:
        """``vectors`` minus the model's mean query of the head, when the config asks for it."""
        means = self.bundle.query_means
        if self.config.center_queries and layer in means:
            return vectors - means[layer][head].numpy()[None, :]
        return vectors


class Scorer(Protocol):
    """Question vectors in, score arrays over every position out (summed by the caller)."""

    reads: Literal["keys", "postings"]
    """The store the scorer needs: ``keys`` (``store_keys=True``) or ``postings``."""

    def contributions(self, queries: HeadQueries, context: ScoringContext) -> Iterator[np.ndarray]:
        """Arrays of ``context.n_positions`` scores whose sum, over heads, is the position score."""
        ...

    def row_logsumexp(
        self, queries: HeadQueries, context: ScoringContext
    ) -> dict[tuple[int, int], np.ndarray]:
        """Each question row's softmax normaliser over this index's candidates, per head: what
        the shards of one corpus add up (``logaddexp``) before scoring with ``row_lse``."""
        ...


class ExactScorer:
    """Attention over stored keys; past ``cluster_search_above`` candidates, clustered search."""

    reads: Literal["keys", "postings"] = "keys"

    def contributions(self, queries: HeadQueries, context: ScoringContext) -> Iterator[np.ndarray]:
        config = context.config
        clustered = self._clustered(context)
        for field_key, rows, sizes, heads in self._by_field(queries, context):
            keys = context.key_stores[field_key]
            if clustered:
                yield clustered_exact_scores(
                    rows,
                    keys,
                    context.n_positions,
                    context.allowed,
                    config.temperature,
                    sizes,
                    config.positions_per_row,
                )
            else:
                lse = None
                if context.row_lse is not None:
                    lse = np.concatenate([context.row_lse[h] for h in heads])
                yield exact_scores(
                    rows, keys, context.n_positions, context.allowed, config.temperature, sizes, lse
                )

    def row_logsumexp(
        self, queries: HeadQueries, context: ScoringContext
    ) -> dict[tuple[int, int], np.ndarray]:
        return {
            (layer, head): exact_row_logsumexp(
                context.centred(layer, head, vectors),
                context.key_stores[context.field_of(layer, head)],
                context.n_positions,
                context.allowed,
                context.config.temperature,
            )
            for (layer, head), vectors in queries.items()
        }

    def sparse_contributions(
        self, queries: HeadQueries, context: ScoringContext
    ) -> list[tuple[np.ndarray, np.ndarray]] | None:
        """With clustered search, each field's (positions read, scores); None when every key
        is read (the scores are then dense)."""
        if not self._clustered(context):
            return None
        config = context.config
        return [
            clustered_exact_mass(
                rows,
                context.key_stores[field_key],
                context.n_positions,
                context.allowed,
                config.temperature,
                sizes,
                config.positions_per_row,
            )
            for field_key, rows, sizes, _ in self._by_field(queries, context)
        ]

    def row_unit_max(
        self, queries: HeadQueries, context: ScoringContext, corpus: Corpus
    ) -> RowUnitMax:
        """Each question row's best attention per unit (coverage pooling, :mod:`.coverage`),
        from the clustered search past ``cluster_search_above`` candidates, else every key."""
        config = context.config
        gathered = RowUnitMax(corpus)
        if context.n_positions == 0 or not queries:
            return gathered
        clustered = self._clustered(context)
        candidate_units = None
        if not clustered:
            owner = position_units(corpus)
            candidate_units = owner if context.allowed is None else owner[context.allowed]
        for field_key, rows, sizes, _ in self._by_field(queries, context):
            keys = context.key_stores[field_key]
            if clustered:
                unit_max = clustered_row_unit_max(
                    rows,
                    keys,
                    context.n_positions,
                    lambda positions: unit_of_positions(corpus, positions),
                    corpus.n_units,
                    context.allowed,
                    config.temperature,
                    config.positions_per_row,
                )
            else:
                assert candidate_units is not None
                unit_max = exact_row_unit_max(
                    rows,
                    keys,
                    context.n_positions,
                    candidate_units,
                    corpus.n_units,
                    context.allowed,
                    config.temperature,
                )
            weight = np.concatenate([np.full(g, 1.0 / (g * len(queries))) for g in sizes])
            gathered.add(unit_max, weight)
        return gathered

    @staticmethod
    def _clustered(context: ScoringContext) -> bool:
        allowed = context.allowed
        n_candidates = context.n_positions if allowed is None else int(allowed.sum())
        threshold = context.config.cluster_search_above
        # A shard scoring under a corpus-wide normaliser reads every key: clusters would make
        # its part of the softmax differ from one index's.
        return context.row_lse is None and threshold is not None and n_candidates > threshold

    @staticmethod
    def _by_field(
        queries: HeadQueries, context: ScoringContext
    ) -> Iterator[tuple[Field, np.ndarray, list[int], list[tuple[int, int]]]]:
        """(field, stacked question rows, rows per head, heads): heads sharing a KV head (GQA)
        are scored together, so their keys are read once."""
        by_field: dict[Field, list[tuple[tuple[int, int], np.ndarray]]] = {}
        for (layer, head), vectors in queries.items():
            q = context.centred(layer, head, vectors)
            if len(q):
                by_field.setdefault(context.field_of(layer, head), []).append(((layer, head), q))
        for field_key, group in by_field.items():
            rows = np.concatenate([q for _, q in group])
            yield field_key, rows, [len(q) for _, q in group], [h for h, _ in group]


class AlignedScorer:
    """Attention through the SAE atoms each question token aligns with best."""

    reads: Literal["keys", "postings"] = "postings"

    def contributions(self, queries: HeadQueries, context: ScoringContext) -> Iterator[np.ndarray]:
        bundle = context.bundle
        for (layer, head), vectors in queries.items():
            q = context.centred(layer, head, vectors)
            yield aligned_scores(
                bundle.map_queries(layer, q),
                bundle.saes[layer],
                context.postings[context.field_of(layer, head)],
                context.n_positions,
                context.config.atoms_per_query,
                context.allowed,
                context.config.temperature,
                None if context.row_lse is None else context.row_lse[(layer, head)],
            )

    def row_logsumexp(
        self, queries: HeadQueries, context: ScoringContext
    ) -> dict[tuple[int, int], np.ndarray]:
        bundle = context.bundle
        return {
            (layer, head): aligned_row_logsumexp(
                bundle.map_queries(layer, context.centred(layer, head, vectors)),
                bundle.saes[layer],
                context.postings[context.field_of(layer, head)],
                context.n_positions,
                context.config.atoms_per_query,
                context.allowed,
                context.config.temperature,
            )
            for (layer, head), vectors in queries.items()
        }


class CoactivationScorer:
    """S3 eq. 4: shared feature ids of question and key, weighted by idf (never centred)."""

    reads: Literal["keys", "postings"] = "postings"

    def contributions(self, queries: HeadQueries, context: ScoringContext) -> Iterator[np.ndarray]:
        if context.row_lse is not None:
            raise ValueError(NO_SHARED_NORMALISER)
        bundle = context.bundle
        for (layer, head), vectors in queries.items():
            yield coactivation_scores(
                bundle.map_queries(layer, vectors),
                bundle.saes[layer],
                context.postings[context.field_of(layer, head)],
                context.n_positions,
                context.allowed,
                bundle.key_coding,
            )

    def row_logsumexp(
        self, queries: HeadQueries, context: ScoringContext
    ) -> dict[tuple[int, int], np.ndarray]:
        raise ValueError(NO_SHARED_NORMALISER)


SCORER_REGISTRY: dict[ScorerName, Scorer] = {
    "exact": ExactScorer(),
    "aligned": AlignedScorer(),
    "coactivation": CoactivationScorer(),
}
"""Scorer of each :data:`~s3_retriever.search.settings.SCORERS` name."""
