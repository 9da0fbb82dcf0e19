"""Clustered exact search against the full computation it stands in for."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest

from s3_retriever import S3Retriever
from s3_retriever.index.clusters import key_clusters
from s3_retriever.index.key_store import KeyStore
from s3_retriever.search.clustered import clustered_exact_scores
from s3_retriever.search.exact import exact_scores_reference
from s3_retriever.search.scoring import ScoringConfig, score_positions
from tests.conftest import HEAD_DIM, hit_tokens, make_bundle


def _store(keys: np.ndarray) -> KeyStore:
    store = KeyStore(keys.shape[1])
    store.append(np.arange(len(keys), dtype=np.int64), keys)
    store.flush(len(keys))
    return store


def _corpus_keys(rng: np.random.Generator, n: int, needles: dict[int, np.ndarray]) -> np.ndarray:
    """Random keys with a few runs of positions that point along given directions."""
    keys = rng.standard_normal((n, HEAD_DIM)).astype(np.float32)
    for start, direction in needles.items():
        keys[start : start + 5] = direction * 4 + rng.standard_normal((5, HEAD_DIM)) * 0.3
    return keys


def test_clusters_partition_the_positions() -> None:
    rng = np.random.default_rng(0)
    store = _store(rng.standard_normal((5000, HEAD_DIM)).astype(np.float32))
    clusters = key_clusters(store)
    assert np.array_equal(np.sort(clusters.order), np.arange(5000))
    for c in range(len(clusters.means)):
        members = clusters.order[clusters.offsets[c] : clusters.offsets[c + 1]]
        assert np.all(clusters.cluster_of[members] == c)
    keys = store.dequantize(0, 5000)
    filled = clusters.counts > 0
    np.testing.assert_allclose(
        clusters.means[filled],
        np.stack([keys[clusters.cluster_of == c].mean(0) for c in np.flatnonzero(filled)]),
        atol=1e-4,
    )


def test_reading_every_cluster_is_the_full_computation() -> None:
    """With every key read there is nothing to estimate: scores equal the reference within the
    int8 search path's tolerance (questions coded in ~16 bits, as in
    tests/search/test_scoring.py)."""
    rng = np.random.default_rng(1)
    n = 1000
    store = _store(rng.standard_normal((n, HEAD_DIM)).astype(np.float32) * 2)
    queries = (rng.standard_normal((6, HEAD_DIM)) * 3).astype(np.float32)
    got = clustered_exact_scores(queries, store, n, positions_per_row=n)
    np.testing.assert_allclose(got, exact_scores_reference(queries, store, n), rtol=1e-3, atol=1e-9)


def test_planted_evidence_ranks_first_when_few_keys_are_read() -> None:
    """Reading ~300 of 6,000 keys per row keeps the planted runs on top, with weights within 10% of
    the full computation's (the unread clusters' normaliser is estimated, not read)."""
    rng = np.random.default_rng(2)
    n = 6000
    directions = {s: rng.standard_normal(HEAD_DIM).astype(np.float32) for s in (700, 2950)}
    store = _store(_corpus_keys(rng, n, directions))
    queries = np.stack([directions[700], directions[2950], directions[700]]) * 0.6
    got = clustered_exact_scores(queries, store, n, positions_per_row=300)
    want = exact_scores_reference(queries, store, n)
    planted = np.r_[700:705, 2950:2955]
    assert set(np.argsort(-got)[:10]) == set(planted)
    np.testing.assert_allclose(got[planted], want[planted], rtol=0.1)
    assert np.count_nonzero(got) < n / 4


def test_unread_normaliser_is_estimated_not_dropped() -> None:
    """A row whose attention spreads over the whole index keeps a small weight per position: the
    estimate of the unread clusters stays within 10% of the true normaliser, where dropping them
    would inflate the read positions' weights many times."""
    rng = np.random.default_rng(3)
    n = 8000
    store = _store(rng.standard_normal((n, HEAD_DIM)).astype(np.float32))
    spread_row = rng.standard_normal((1, HEAD_DIM)).astype(np.float32) * 0.5
    got = clustered_exact_scores(spread_row, store, n, positions_per_row=500)
    want = exact_scores_reference(spread_row, store, n)
    read = got > 0
    assert read.sum() < n / 4
    assert abs(math.log(got[read].sum() / want[read].sum())) < 0.1


def test_filtered_positions_stay_out() -> None:
    rng = np.random.default_rng(4)
    n = 6000
    store = _store(rng.standard_normal((n, HEAD_DIM)).astype(np.float32))
    queries = rng.standard_normal((4, HEAD_DIM)).astype(np.float32)
    allowed = rng.random(n) < 0.3
    everything = clustered_exact_scores(queries, store, n, allowed, positions_per_row=n)
    want = exact_scores_reference(queries, store, n, allowed)
    np.testing.assert_allclose(everything, want, rtol=1e-3, atol=1e-9)
    some = clustered_exact_scores(queries, store, n, allowed, positions_per_row=200)
    assert np.all(some[~allowed] == 0) and some.any()
    assert not clustered_exact_scores(queries, store, n, np.zeros(n, bool)).any()


def test_clusters_follow_new_keys() -> None:
    """Clusters are derived data: keys added later are in the next search's clusters."""
    rng = np.random.default_rng(5)
    store = _store(rng.standard_normal((4096, HEAD_DIM)).astype(np.float32))
    before = key_clusters(store)
    assert key_clusters(store) is before
    store.append(np.arange(4096, 8192), rng.standard_normal((4096, HEAD_DIM)).astype("f") + 9)
    store.flush(8192)
    after = key_clusters(store)
    assert len(after.cluster_of) == 8192 and after.counts.sum() == 8192
    assert after.means.max() > before.means.max() + 5


def test_score_positions_switches_to_clusters_past_the_threshold() -> None:
    """Same question, same index: the clustered path reading every key gives the full path's
    scores, and ``cluster_search_above`` decides which one runs."""
    rng = np.random.default_rng(6)
    n = 3000
    store = _store(rng.standard_normal((n, HEAD_DIM)).astype(np.float32))
    head_queries = {(1, 0): rng.standard_normal((3, HEAD_DIM)).astype(np.float32)}
    bundle = make_bundle("tiny")

    def scores(**settings: int | None) -> np.ndarray:
        config = ScoringConfig(center_queries=False, **settings)  # type: ignore[arg-type]
        return score_positions(head_queries, config, n, 1, {(1, 0): store}, {}, bundle)

    full = scores(cluster_search_above=None)
    np.testing.assert_allclose(
        scores(cluster_search_above=0, positions_per_row=n), full, rtol=1e-3, atol=1e-9
    )
    assert np.count_nonzero(scores(cluster_search_above=0, positions_per_row=100)) < n
    assert np.count_nonzero(scores(cluster_search_above=n, positions_per_row=100)) == n


@pytest.mark.parametrize("settings", [{"positions_per_row": 0}, {"cluster_search_above": -1}])
def test_bad_cluster_settings_are_refused(settings: dict[str, int]) -> None:
    with pytest.raises(ValueError, match="must be"):
        ScoringConfig(**settings)  # type: ignore[arg-type]


def test_retriever_search_through_clusters(indexed: S3Retriever) -> None:
    """On a real (tiny-model) index: searching the question vectors alone equals scoring the
    question; clusters reading every key retrieve what the full search retrieves; reading few
    keys still gives hits within the budget."""
    question = "Which city hosts the observatory?"
    full_config = indexed.config
    try:
        vectors = indexed.question_vectors(question)
        np.testing.assert_array_equal(
            indexed.score_question_vectors(vectors), indexed.score_positions(question)
        )
        full = indexed.retrieve(question, token_budget=60, mode="s3")
        n = indexed.index.corpus.n_positions
        every_key = dataclasses.replace(
            full_config.scoring, cluster_search_above=0, positions_per_row=n
        )
        indexed.config = full_config.replace(scoring=every_key)
        assert indexed.retrieve(question, token_budget=60, mode="s3") == full
        few_keys = dataclasses.replace(every_key, positions_per_row=16)
        indexed.config = full_config.replace(scoring=few_keys)
        hits = indexed.retrieve(question, token_budget=60, mode="s3")
        assert hits and sum(hit_tokens(indexed, h) for h in hits) <= 60
    finally:
        indexed.config = full_config
