"""Sharded search with the shards in this process: exactly one index's results (no Ray)."""

from __future__ import annotations

from typing import Any

import pytest

from s3_retriever import SAEBundle
from s3_retriever.distributed.routing import shard_of
from s3_retriever.distributed.testing import local_sharded
from s3_retriever.models import LoadedModel
from s3_retriever.search.fusion import HybridConfig
from s3_retriever.search.relevance import FewerHitsWarning
from s3_retriever.search.settings import ScoringConfig
from tests.distributed.conftest import (
    QUESTIONS,
    assert_same_hits,
    reference,
    search_cases,
    with_floor,
)


@pytest.fixture(scope="module")
def pair(
    loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: list[dict[str, Any]]
) -> Any:
    return reference(loaded, bundle, shard_config, rows), local_sharded(
        reference(loaded, bundle, shard_config, []), rows, 4
    )


@pytest.mark.parametrize("case", search_cases(), ids=lambda c: "-".join(map(str, c.values())))
def test_four_shards_return_what_one_index_returns(pair: Any, case: dict[str, Any]) -> None:
    single, sharded = pair
    for question in QUESTIONS:
        want = single.retrieve(question, **case)
        assert want or case.get("filters"), "a case that finds nothing tests nothing"
        assert_same_hits(sharded.retrieve(question, **case), want)


def _answers(target: Any, question: str) -> list[list[Any]]:
    return [target.retrieve(question, **case) for case in search_cases()]


def test_a_high_floor_drops_spans_and_the_shards_drop_the_same_after_changes(
    loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: list[dict[str, Any]]
) -> None:
    """The default floor seldom bites on this corpus (the tiny model's S3 relevance is flat,
    0.98-1), so a floor of 0.99 shows that the shards apply it: it changes many answers, and
    the shards' answers equal one index's with it and without it, before and after deletes and
    re-adds."""
    pairs = {}
    for floor in (0.0, 0.99):
        config = with_floor(shard_config, floor)
        pairs[floor] = (
            reference(loaded, bundle, config, rows),
            local_sharded(reference(loaded, bundle, config, []), rows, 4),
        )
    for step in ("built", "changed"):
        answers = {}
        for floor, (single, sharded) in pairs.items():
            answers[floor] = [a for q in QUESTIONS for a in _answers(single, q)]
            got = [a for q in QUESTIONS for a in _answers(sharded, q)]
            for g, w in zip(got, answers[floor], strict=True):
                assert_same_hits(g, w)
            assert all(h.relevance >= floor for hits in answers[floor] for h in hits)
        changed = sum(
            [h.id for h in a] != [h.id for h in b]
            for a, b in zip(answers[0.0], answers[0.99], strict=True)
        )
        assert changed >= 10, step
        for single, sharded in pairs.values():
            gone = [r["id"] for r in rows[1::3]]
            assert sharded.delete(gone) == single.delete(gone)
            again = rows[1::6]
            for target in (single, sharded):
                target.add_documents(
                    [r["text"] for r in again],
                    [r["id"] for r in again],
                    [r["metadata"] for r in again],
                )


def test_fewer_hits_than_top_k_warn_as_in_one_index(pair: Any) -> None:
    single, sharded = pair
    with pytest.warns(FewerHitsWarning) as want:
        expected = single.retrieve(QUESTIONS[0], top_k=50, token_budget=3000, mode="bm25")
    with pytest.warns(FewerHitsWarning) as got:
        assert_same_hits(
            sharded.retrieve(QUESTIONS[0], top_k=50, token_budget=3000, mode="bm25"), expected
        )
    assert str(got[0].message) == str(want[0].message)
    assert got[0].filename == __file__


def test_every_shard_holds_documents_and_routing_is_by_id(pair: Any) -> None:
    _, sharded = pair
    held = sharded._shards.all("doc_ids")
    assert all(held), "a shard without documents would not test the merge"
    for shard, ids in enumerate(held):
        assert all(shard_of(i, 4) == shard for i in ids)


def test_lead_and_tail_groups_merge_in_corpus_order(
    loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: list[dict[str, Any]]
) -> None:
    config = shard_config.replace(hybrid=HybridConfig(lead_tokens=12, tail_tokens=6))
    single = reference(loaded, bundle, config, rows)
    sharded = local_sharded(reference(loaded, bundle, config, []), rows, 3)
    for mode in ("s3", "hybrid", "bm25"):
        want = single.retrieve(QUESTIONS[0], token_budget=500, mode=mode)
        assert_same_hits(sharded.retrieve(QUESTIONS[0], token_budget=500, mode=mode), want)


def test_other_fusion_rules_are_refused_clearly(
    loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: list[dict[str, Any]]
) -> None:
    config = shard_config.replace(hybrid=HybridConfig(fusion="zsum"))
    sharded = local_sharded(reference(loaded, bundle, config, []), rows[:4], 2)
    with pytest.raises(ValueError, match="reciprocal-rank fusion"):
        sharded.retrieve(QUESTIONS[0], mode="hybrid")
    assert sharded.retrieve(QUESTIONS[0], mode="s3")


def test_add_refuses_ids_held_by_any_shard(pair: Any, rows: list[dict[str, Any]]) -> None:
    _, sharded = pair
    with pytest.raises(ValueError, match="already indexed.*replace=True"):
        sharded.add_documents(["x"], ids=[rows[5]["id"]])
    assert len(sharded) == len(rows)


def test_replace_upserts_on_the_owning_shard_as_one_index_does(
    loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: list[dict[str, Any]]
) -> None:
    """``replace=True`` swaps a document's text and metadata and moves it after every other
    document, in one index and across shards alike; a new id in the same call is added."""
    few = rows[:8]
    single = reference(loaded, bundle, shard_config, few)
    sharded = local_sharded(reference(loaded, bundle, shard_config, []), few, 2)
    texts = [rows[20]["text"], rows[21]["text"], rows[22]["text"]]
    ids = [few[2]["id"], "new-doc", few[5]["id"]]
    metas = [{"group": "z", "n": -1}, None, {"group": "a", "n": 99}]
    for target in (single, sharded):
        assert target.add_documents(texts, ids, metas, replace=True) == ids
    assert len(sharded) == len(single) == 9
    assert sorted(sharded.doc_ids) == sorted(single.doc_ids)
    held = sharded._shards.all("doc_ids")
    assert all(i in held[shard_of(i, 2)] for i in ids)
    assert sum(map(len, held)) == 9
    for question in (*QUESTIONS, texts[0][:80]):
        for case in ({"mode": "s3", "token_budget": 3000}, {"mode": "hybrid", "top_k": 4}):
            assert_same_hits(sharded.retrieve(question, **case), single.retrieve(question, **case))
    case = {"mode": "bm25", "filters": {"group": "z"}, "order": "score"}
    want = single.retrieve(texts[0][:80], **case)
    assert want and {h.doc_id for h in want} == {few[2]["id"]}
    assert_same_hits(sharded.retrieve(texts[0][:80], **case), want)


def test_the_aligned_scorer_merges_exactly_too(
    loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: list[dict[str, Any]]
) -> None:
    config = shard_config.replace(scoring=ScoringConfig(scorer="aligned"))
    single = reference(loaded, bundle, config, rows)
    sharded = local_sharded(reference(loaded, bundle, config, []), rows, 4)
    for case in search_cases()[:10]:
        want = single.retrieve(QUESTIONS[2], **case)
        assert_same_hits(sharded.retrieve(QUESTIONS[2], **case), want)


def test_the_coactivation_scorer_is_refused_clearly(
    loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: list[dict[str, Any]]
) -> None:
    config = shard_config.replace(scoring=ScoringConfig(scorer="coactivation"))
    sharded = local_sharded(reference(loaded, bundle, config, []), rows[:4], 2)
    with pytest.raises(ValueError, match="coactivation"):
        sharded.retrieve(QUESTIONS[0], mode="s3")
    assert sharded.retrieve(QUESTIONS[0], mode="bm25")
