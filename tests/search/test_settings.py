"""Per-call search settings: the same hits as a retriever built with them, and no change to it."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest

from s3_retriever import S3Retriever, ScoringConfig, SearchSettings, SpanConfig
from s3_retriever.search.scorers import SCORER_REGISTRY
from s3_retriever.search.settings import MODES, SCORERS
from tests.conftest import RetrieverFactory, tiny_config

QUESTIONS = ("When does the train leave the mountain station?", "How many nurses will be hired?")


def _hits(retriever: S3Retriever, **kwargs: Any) -> list[tuple[str, int, int, float]]:
    return [
        (h.doc_id, h.start_char, h.end_char, h.score)
        for question in QUESTIONS
        for mode in MODES
        for h in retriever.retrieve(question, token_budget=64, mode=mode, **kwargs)  # type: ignore[arg-type]
    ]


def test_every_scorer_name_has_a_scorer() -> None:
    assert set(SCORER_REGISTRY) == set(SCORERS)


@pytest.mark.parametrize("scorer", ["aligned", "coactivation"])
def test_settings_per_call_match_a_retriever_built_with_them(
    indexed: S3Retriever,
    make_retriever: RetrieverFactory,
    corpus: dict[str, str],
    scorer: str,
) -> None:
    changed = SearchSettings(
        scoring=ScoringConfig(scorer=scorer),  # type: ignore[arg-type]
        spans=SpanConfig(min_span_tokens=16, smooth_width=7),
        hybrid=indexed.config.hybrid,
    )
    built = make_retriever(
        tiny_config(scoring=changed.scoring, spans=changed.spans, hybrid=changed.hybrid)
    )
    built.add_documents(list(corpus.values()), ids=list(corpus))
    config_before = indexed.config
    assert _hits(indexed, search=changed) == _hits(built)
    assert indexed.config is config_before
    assert _hits(indexed) == _hits(indexed, search=indexed.config.search_settings())
    assert _hits(indexed) != _hits(indexed, search=changed)


def test_a_scorer_without_its_store_is_refused(make_retriever: RetrieverFactory) -> None:
    keys_only = make_retriever(store_postings=False)
    keys_only.add_documents(["The train leaves at seven."], ids=["t"])
    aligned = dataclasses.replace(
        keys_only.config.search_settings(), scoring=ScoringConfig(scorer="aligned")
    )
    with pytest.raises(ValueError, match="store_postings=True"):
        keys_only.retrieve("train", mode="s3", search=aligned)
    assert keys_only.retrieve("train", mode="bm25", search=aligned)
