"""The benchmarks' index repetition: a repeated index must score like the original, repeated."""

from __future__ import annotations

import numpy as np
import pytest

from benchmarks.replicate import check_replication, replicate
from s3_retriever import ScoringConfig
from s3_retriever.search.scoring import ScorerName
from tests.conftest import RetrieverFactory

QUESTION = "When does the train leave the mountain station?"


@pytest.mark.parametrize("scorer", ["exact", "aligned"])
def test_repeated_index_scores_are_the_original_ones_spread_over_copies(
    make_retriever: RetrieverFactory, corpus: dict[str, str], scorer: ScorerName
) -> None:
    """Attention over r identical copies gives each copy 1/r of the original distribution."""
    retriever = make_retriever(scoring=ScoringConfig(scorer=scorer))
    retriever.add_documents(list(corpus.values()), ids=list(corpus))
    n = retriever.index.corpus.n_positions
    for postings in retriever.index.postings.values():
        check_replication(postings, n)
    base = retriever.score_positions(QUESTION)
    units = retriever.index.corpus.n_units
    replicate(retriever, 3)
    assert retriever.index.corpus.n_positions == 3 * n
    assert retriever.index.corpus.n_units == 3 * units
    assert retriever.doc_ids[len(corpus)] == f"{next(iter(corpus))}#1"
    grown = retriever.score_positions(QUESTION)
    np.testing.assert_allclose(grown, np.tile(base, 3) / 3, rtol=1e-3, atol=1e-8)
    hits = retriever.retrieve(QUESTION, token_budget=40, mode="s3")
    assert hits
    for hit in hits:
        original, copy = hit.doc_id.rsplit("#", 1)
        assert 0 <= int(copy) < 3
        assert hit.text == corpus[original][hit.start_char : hit.end_char]
