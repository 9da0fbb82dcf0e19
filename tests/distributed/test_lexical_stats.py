"""BM25 from summed shard statistics equals one bm25s index, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest

from s3_retriever.distributed.lexical_stats import BM25Stats, UnitTerms, query_terms
from s3_retriever.index.bm25 import BM25Index, LexicalConfig

TEXTS = [
    "the river flows",
    "river river bank of the river",
    "",
    "of the",
    "a hospital budget river",
    "budget report budget",
    "trains at seven",
    "river flows",
] * 3


@pytest.mark.parametrize("cuts", [(5, 12), (1, 2, 3), (23,)])
@pytest.mark.parametrize(
    "query", ["river budget", "river river trains", "the of", "unknown words", "seven report"]
)
def test_shards_score_like_one_index(cuts: tuple[int, ...], query: str) -> None:
    config = LexicalConfig()
    single = BM25Index(config)
    single.build(TEXTS)
    edges = [0, *cuts, len(TEXTS)]
    parts = [UnitTerms(TEXTS[a:b], config) for a, b in zip(edges, edges[1:], strict=False)]
    terms = query_terms(query, config)
    corpus = BM25Stats.combine([p.stats(terms) for p in parts])
    assert corpus.n_units == len(TEXTS)
    assert corpus == UnitTerms(TEXTS, config).stats(terms)
    got = np.concatenate([p.scores(terms, corpus) for p in parts])
    np.testing.assert_array_equal(got, single.scores(query))


def test_a_shard_scoring_alone_would_differ() -> None:
    """The statistics matter: a shard's own idf and average length give other scores."""
    config = LexicalConfig()
    part = UnitTerms(TEXTS[:5], config)
    terms = query_terms("river budget", config)
    whole = BM25Stats.combine([part.stats(terms), UnitTerms(TEXTS[5:], config).stats(terms)])
    assert not np.allclose(part.scores(terms, part.stats(terms)), part.scores(terms, whole))
