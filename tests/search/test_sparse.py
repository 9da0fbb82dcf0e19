"""The sparse fast path after a clustered search against the dense plain path.

Smoothing and unit scores must be equal bit for bit, peaks identical, and ``retrieve`` must give
the same hits with scores within 1e-6 (relative) whichever path runs.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from s3_retriever import Hit, S3Retriever, ScoringConfig, SearchSettings
from s3_retriever.retriever import Mode
from s3_retriever.search import pipeline
from s3_retriever.search.peaks import iter_peak_units
from s3_retriever.search.scoring import score_index_sparse
from s3_retriever.search.spans import smooth, unit_scores
from s3_retriever.search.sparse import (
    SparseScores,
    smooth_sparse,
    unit_scores_from_raw,
    unit_scores_sparse,
)

QUESTIONS = ("When does the train leave?", "river flooding in spring", "hospital wards")


def _random_sparse(n_positions: int, seed: int, share: float) -> SparseScores:
    rng = np.random.default_rng(seed)
    positions = np.flatnonzero(rng.random(n_positions) < share)
    values = rng.random(len(positions)).astype(np.float32)
    values[::7] = values[0]  # exact ties, which peaks must order by position
    return SparseScores(positions, values, n_positions)


@pytest.mark.parametrize(
    ("seed", "share", "width"),
    [(0, 0.02, 15), (1, 0.2, 5), (2, 0.5, 1), (3, 0.005, 31), (4, 0.05, 15), (5, 0.01, 61)],
)
def test_sparse_smoothing_units_and_peaks_equal_dense(
    indexed: S3Retriever, seed: int, share: float, width: int
) -> None:
    corpus = indexed.index.corpus
    raw = _random_sparse(corpus.n_positions, seed, share)
    dense_smoothed = smooth(raw.dense(), corpus, width)
    sparse_smoothed = smooth_sparse(raw, corpus, width)
    assert np.array_equal(sparse_smoothed.dense(), dense_smoothed)
    dense_units = unit_scores(dense_smoothed, corpus)
    assert np.array_equal(unit_scores_sparse(sparse_smoothed, corpus), dense_units)
    assert np.array_equal(unit_scores_from_raw(raw, corpus, width), dense_units)
    for n_candidates in (5, 300, corpus.n_positions):
        dense_peaks = list(iter_peak_units(dense_smoothed, corpus, 4, n_candidates))
        sparse_peaks = list(iter_peak_units(sparse_smoothed, corpus, 4, n_candidates))
        assert sparse_peaks == dense_peaks
        # Peaks beyond the read positions (zeros) come in position order, after every peak.
        assert len(set(dense_peaks)) == len(dense_peaks)


def test_peaks_are_lazy_prefixes(indexed: S3Retriever) -> None:
    corpus = indexed.index.corpus
    smoothed = smooth_sparse(_random_sparse(corpus.n_positions, 3, 0.1), corpus, 15)
    everything = list(iter_peak_units(smoothed, corpus, 16, corpus.n_positions))
    assert (
        list(itertools.islice(iter_peak_units(smoothed, corpus, 16, corpus.n_positions), 3))
        == (everything[:3])
    )


CLUSTERED = SearchSettings(scoring=ScoringConfig(cluster_search_above=0, positions_per_row=64))


def test_clustered_search_gives_sparse_scores(indexed: S3Retriever) -> None:
    vectors = indexed.question_vectors(QUESTIONS[0], CLUSTERED)
    sparse = score_index_sparse(
        indexed.index, vectors, CLUSTERED.scoring, indexed.kv_group, indexed.bundle
    )
    assert sparse is not None
    assert 0 < len(sparse.positions) < indexed.index.corpus.n_positions
    dense = indexed.score_question_vectors(vectors, search=CLUSTERED)
    np.testing.assert_allclose(sparse.dense(), dense, rtol=1e-6, atol=0)
    full = SearchSettings(scoring=ScoringConfig(cluster_search_above=None))
    assert score_index_sparse(indexed.index, vectors, full.scoring, 1, indexed.bundle) is None


MODES: tuple[Mode, ...] = ("s3", "hybrid")


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("budget", [40, 200])
def test_retrieve_fast_path_equals_plain_path(
    indexed: S3Retriever, monkeypatch: pytest.MonkeyPatch, mode: Mode, budget: int
) -> None:
    def run() -> list[list[Hit]]:
        return [
            indexed.retrieve(q, mode=mode, token_budget=budget, search=CLUSTERED) for q in QUESTIONS
        ]

    fast = run()
    monkeypatch.setattr(pipeline, "score_index_sparse", lambda *args, **kwargs: None)
    plain = run()
    assert any(fast)
    for fast_hits, plain_hits in zip(fast, plain, strict=True):
        assert [h.id for h in fast_hits] == [h.id for h in plain_hits]
        for f, p in zip(fast_hits, plain_hits, strict=True):
            assert f.score == pytest.approx(p.score, rel=1e-6)
            assert f.scores == pytest.approx(p.scores, rel=1e-6)
