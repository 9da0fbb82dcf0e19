"""Fixtures of the sharded-index tests: the tiny model, a corpus, and a one-index reference."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from s3_retriever import RetrieverConfig, S3Retriever, SAEBundle
from s3_retriever.distributed.testing import EXACT_SCAN, sharded_corpus
from s3_retriever.models import LoadedModel
from s3_retriever.search.hits import Hit
from s3_retriever.search.spans import SpanConfig
from s3_retriever.testing import one_thread, tiny_config

QUESTIONS = (
    "river harvest apples budget",
    "the committee voted to increase funding for nurses",
    "ocean temperature fish coral",
)
"""Questions asked in every mode."""


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    with one_thread():
        yield


@pytest.fixture(scope="session")
def shard_config() -> RetrieverConfig:
    """One chunk per forward pass: a chunk's keys then do not depend on which other documents
    shared its batch, so a sharded build stores the very keys one index stores. The relevance
    floor keeps its default (spans.min_relevance = 0.05)."""
    config = tiny_config(scan=EXACT_SCAN)
    assert config.spans.min_relevance == SpanConfig().min_relevance > 0
    return config


def with_floor(config: RetrieverConfig, floor: float) -> RetrieverConfig:
    """``config`` with the relevance floor at ``floor`` (0: every unit may start a span)."""
    return dataclasses.replace(config, spans=dataclasses.replace(config.spans, min_relevance=floor))


@pytest.fixture(scope="session")
def rows() -> list[dict[str, Any]]:
    return sharded_corpus(30)


def reference(
    loaded: LoadedModel, bundle: SAEBundle, config: RetrieverConfig, rows: Sequence[dict[str, Any]]
) -> S3Retriever:
    """One index over ``rows``, added in their order."""
    single = S3Retriever(loaded, bundle, config)
    single.add_documents(
        [r["text"] for r in rows], [r["id"] for r in rows], [r["metadata"] for r in rows]
    )
    return single


def assert_same_hits(got: Sequence[Hit], want: Sequence[Hit]) -> float:
    """Same spans (ids, offsets, text, metadata) in the same order, scores and relevance within
    1e-5; returns the largest difference."""
    assert [(h.doc_id, h.start_char, h.end_char) for h in got] == [
        (h.doc_id, h.start_char, h.end_char) for h in want
    ]
    worst = 0.0
    for g, w in zip(got, want, strict=True):
        assert g.text == w.text and g.metadata == w.metadata
        assert set(g.scores) == set(w.scores)
        for name in w.scores:
            worst = max(worst, abs(g.scores[name] - w.scores[name]))
        worst = max(worst, abs(g.score - w.score), abs(g.relevance - w.relevance))
    assert worst <= 1e-5
    return worst


def search_cases() -> list[dict[str, Any]]:
    """Modes x budgets, with and without filters and top_k."""
    cases: list[dict[str, Any]] = []
    for mode in ("s3", "hybrid", "bm25"):
        cases += [
            {"mode": mode, "token_budget": 128},
            {"mode": mode, "token_budget": 64, "filters": {"group": ["a", "c"]}},
            {"mode": mode, "token_budget": 400, "top_k": 3},
            {"mode": mode, "token_budget": 3000},
            {"mode": mode, "token_budget": 200, "filters": {"n": 7}},
        ]
    return cases


def bundle_of(path: Path) -> SAEBundle:
    return SAEBundle.load(path)
