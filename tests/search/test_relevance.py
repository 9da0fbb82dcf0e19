"""Best-first order, normalised relevance and the floor (s3_retriever/search/relevance.py)."""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from s3_retriever import FewerHitsWarning, S3Retriever
from s3_retriever.retriever import MODES
from s3_retriever.search.relevance import unit_relevance
from s3_retriever.search.spans import SpanConfig
from tests.conftest import RetrieverFactory

QUESTION = "How many nurses will the hospital hire?"


def test_unit_relevance_is_each_components_share_of_its_best() -> None:
    s3 = np.array([0.2, 0.05, 0.0, 0.4])
    bm25 = np.array([0.0, 3.0, 1.5, -1.0])
    allowed = np.array([True, True, True, False])
    relevance = unit_relevance({"s3": s3, "bm25": bm25}, allowed)
    # The best allowed s3 is 0.2 (unit 3 is filtered out), the best bm25 3.0.
    np.testing.assert_allclose(relevance, [1.0, 1.0, 0.5, 0.0])
    assert unit_relevance({"bm25": np.zeros(3)}, np.ones(3, bool)).tolist() == [0, 0, 0]


def test_order_score_is_best_first_and_document_order_reads_like_the_source(
    indexed: S3Retriever,
) -> None:
    for mode in MODES:
        by_doc = indexed.retrieve(QUESTION, token_budget=200, mode=mode)
        best = indexed.retrieve(QUESTION, token_budget=200, mode=mode, order="score")
        assert sorted(h.id for h in best) == sorted(h.id for h in by_doc)
        assert [h.score for h in best] == sorted((h.score for h in best), reverse=True)
        rows = [(indexed.doc_ids.index(h.doc_id), h.start_char) for h in by_doc]
        assert rows == sorted(rows)
    with pytest.raises(ValueError, match="order must be one of document, score"):
        indexed.retrieve(QUESTION, order="rank")  # type: ignore[arg-type]


def test_relevance_in_unit_range_beside_the_raw_components(indexed: S3Retriever) -> None:
    for mode in MODES:
        hits = indexed.retrieve(QUESTION, token_budget=300, mode=mode, order="score")
        assert hits
        assert all(0.0 <= h.relevance <= 1.0 for h in hits)
        assert max(h.relevance for h in hits) == pytest.approx(1.0)  # the best unit is in
        assert all(set(h.scores) <= {"s3", "bm25"} and h.scores for h in hits)


def _with_floor(make_retriever: RetrieverFactory, floor: float, texts: list[str]) -> S3Retriever:
    retriever = make_retriever(spans=SpanConfig(min_span_tokens=24, min_relevance=floor))
    retriever.add_documents(texts, ids=[f"d{i}" for i in range(len(texts))])
    return retriever


def test_no_span_without_evidence_pads_the_budget(make_retriever: RetrieverFactory) -> None:
    texts = [
        "Preamble\n\nThe hospital will hire twelve nurses next spring.",
        "Chapter two\n\nTrains leave the mountain station at seven.",
        "Appendix\n\nApples ripen in the orchard in late summer.",
    ]
    padded = _with_floor(make_retriever, 0.0, texts)
    floored = _with_floor(make_retriever, 1.0, texts)  # only the best unit of a component
    full = padded.retrieve(QUESTION, token_budget=400, mode="bm25")
    with pytest.warns(FewerHitsWarning, match=r"of top_k=5 spans returned .*min_relevance=1"):
        best = floored.retrieve(QUESTION, token_budget=400, mode="hybrid", top_k=5)
    # Only the best unit of each component starts a span: at most two spans, each holding one.
    assert 1 <= len(best) <= 2
    assert all(h.relevance == pytest.approx(1.0) for h in best)
    assert any("nurses" in h.text for h in best)  # BM25's best unit
    assert all(h.relevance > 0 for h in full)  # bm25 mode drops units sharing no term
    # Floor 0 fills the budget whatever the evidence (what the evaluation measures).
    hybrid = padded.retrieve(QUESTION, token_budget=400, mode="hybrid")
    assert len(hybrid) > len(best)
    assert sum(len(h.text) for h in hybrid) > sum(len(h.text) for h in best)


def test_fewer_hits_warning_names_the_filters(indexed: S3Retriever) -> None:
    with pytest.warns(FewerHitsWarning, match="the filters pass 1 of 4 documents"):
        hits = indexed.retrieve(
            QUESTION, token_budget=40, top_k=10, mode="bm25", filters={"doc_id": "hospital"}
        )
    assert len(hits) < 10
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        indexed.retrieve(QUESTION, token_budget=500, top_k=1)  # enough spans: no warning


def test_floor_is_on_by_default_and_checked() -> None:
    assert 0.0 < SpanConfig().min_relevance < 1.0
    with pytest.raises(ValueError, match="min_relevance"):
        SpanConfig(min_relevance=1.5)
