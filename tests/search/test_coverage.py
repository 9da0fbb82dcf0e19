"""Coverage pooling (s3_retriever/search/coverage.py) against brute-force loops, its clustered
read against reading every key, and retrieval with it in both modes."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from s3_retriever import S3Retriever, ScoringConfig, SearchSettings
from s3_retriever.retriever import Mode
from s3_retriever.search.coverage import RowUnitMax, coverage_scores, scatter_unit_max
from s3_retriever.search.scorers import SCORER_REGISTRY, ExactScorer
from s3_retriever.search.scoring import _index_context, score_index_coverage
from s3_retriever.search.spans import paragraph_starts

QUESTION = "When does the train leave the station?"


def test_scatter_unit_max_matches_a_loop() -> None:
    rng = np.random.default_rng(0)
    values = rng.random((3, 50)).astype(np.float32)
    units = rng.integers(-1, 7, size=50)
    got = scatter_unit_max(torch.from_numpy(values), torch.from_numpy(units), 7).numpy()
    want = np.zeros((3, 7), np.float32)
    for column, unit in enumerate(units):
        if unit >= 0:
            want[:, unit] = np.maximum(want[:, unit], values[:, column])
    assert np.array_equal(got, want)


def _brute_coverage(
    unit_max: np.ndarray,
    weights: np.ndarray,
    indexed: S3Retriever,
    n_candidates: int,
    window: int,
    transform: str,
    document_weight: float,
) -> np.ndarray:
    corpus = indexed.index.corpus
    values = np.log1p(unit_max * n_candidates) if transform == "log" else unit_max
    centre = corpus.unit_tokens.mean(axis=1)
    paragraph = np.cumsum(paragraph_starts(corpus))
    out = np.zeros(corpus.n_units)
    for u in range(corpus.n_units):
        near = [
            v
            for v in range(corpus.n_units)
            if corpus.unit_doc[v] == corpus.unit_doc[u]
            and paragraph[v] == paragraph[u]
            and abs(centre[v] - centre[u]) <= window / 2
        ]
        pooled = values[:, near].max(axis=1)
        document = values[:, corpus.unit_doc == corpus.unit_doc[u]].max(axis=1)
        out[u] = float(weights @ (pooled + values[:, u] + document_weight * document))
    return out


@pytest.mark.parametrize("transform", ["log", "mass"])
@pytest.mark.parametrize(("window", "document_weight"), [(0, 0.0), (16, 0.5), (128, 0.0)])
def test_coverage_scores_match_brute_force(
    indexed: S3Retriever, transform: str, window: int, document_weight: float
) -> None:
    corpus = indexed.index.corpus
    rng = np.random.default_rng(window)
    unit_max = (rng.random((5, corpus.n_units)) * (rng.random((5, corpus.n_units)) < 0.3)).astype(
        np.float32
    )
    weights = rng.random(5).astype(np.float32)
    gathered = RowUnitMax(corpus)
    gathered.add(torch.from_numpy(unit_max[:2]), weights[:2])
    gathered.add(torch.from_numpy(unit_max[2:]), weights[2:])
    got = coverage_scores(
        gathered,
        corpus,
        1000,
        window,
        transform,
        True,
        document_weight,  # type: ignore[arg-type]
    )
    want = _brute_coverage(unit_max, weights, indexed, 1000, window, transform, document_weight)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_clustered_read_of_every_cluster_equals_every_key(indexed: S3Retriever) -> None:
    corpus = indexed.index.corpus
    every_key = ScoringConfig(pooling="coverage", cluster_search_above=None)
    clustered = dataclasses.replace(
        every_key, cluster_search_above=0, positions_per_row=corpus.n_positions
    )
    vectors = indexed.question_vectors(QUESTION, SearchSettings(scoring=every_key))
    results = []
    for config in (every_key, clustered):
        context = _index_context(indexed.index, config, indexed.kv_group, indexed.bundle, None)
        scorer = SCORER_REGISTRY["exact"]
        assert isinstance(scorer, ExactScorer)
        unit_max, weights = scorer.row_unit_max(vectors, context, corpus).stacked()
        results.append((unit_max.numpy(), weights))
    np.testing.assert_allclose(results[0][0], results[1][0], rtol=1e-4, atol=1e-7)
    assert np.array_equal(results[0][1], results[1][1])
    # Row weights add up to one: the mean over heads of each head's mean over its rows.
    assert results[0][1].sum() == pytest.approx(1.0, rel=1e-5)


@pytest.mark.parametrize("mode", ["s3", "hybrid"])
def test_retrieve_with_coverage_ranks_by_it(indexed: S3Retriever, mode: Mode) -> None:
    settings = SearchSettings(scoring=ScoringConfig(pooling="coverage"))
    hits = indexed.retrieve(QUESTION, token_budget=60, mode=mode, search=settings, order="score")
    assert hits
    scores = score_index_coverage(
        indexed.index,
        indexed.question_vectors(QUESTION, settings),
        settings.scoring,
        indexed.kv_group,
        indexed.bundle,
        settings.spans,
    )
    if mode == "s3":
        best_unit = int(np.argmax(scores))
        text = indexed.index.corpus.unit_text(best_unit)
        assert text.strip() in hits[0].text
        assert hits[0].score == pytest.approx(float(scores.max()), rel=1e-5)
    assert all(h.scores["s3"] >= 0 for h in hits)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"pooling": "mean"}, "pooling must be one of"),
        ({"pooling": "coverage", "scorer": "aligned"}, "needs the exact scorer"),
        ({"coverage_window": -1}, "coverage_window"),
        ({"coverage_transform": "sqrt"}, "coverage_transform must be one of"),
        ({"coverage_document": float("nan")}, "coverage_document"),
    ],
)
def test_bad_coverage_settings_are_refused(changes: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        ScoringConfig(**changes)  # type: ignore[arg-type]
