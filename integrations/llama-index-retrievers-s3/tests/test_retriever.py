"""S3AttentionRetriever (LlamaIndex) over a tiny offline core retriever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.schema import Document, NodeRelationship, RelatedNodeInfo, TextNode
from llama_index.core.vector_stores import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from s3_retriever import S3Retriever

from llama_index.retrievers.s3 import S3AttentionRetriever, to_core_filters

QUERY = "How many nurses does the hospital budget add?"
TOPICS = {"rivers": "nature", "hospital": "city", "trains": "city", "ocean": "nature"}


def test_exports_and_namespace_layout() -> None:
    import llama_index.retrievers.s3 as package

    assert set(package.__all__) == {"S3AttentionRetriever", "hit_to_node", "to_core_filters"}
    assert issubclass(S3AttentionRetriever, BaseRetriever)
    root = Path(package.__file__).resolve().parents[2]  # .../llama_index
    assert not (root / "__init__.py").exists()
    assert not (root / "retrievers" / "__init__.py").exists()


def test_nodes_are_exact_spans_with_unique_deterministic_ids(
    core: S3Retriever, corpus: dict[str, str]
) -> None:
    retriever = S3AttentionRetriever(core, similarity_top_k=4, token_budget=64)
    for query in (QUERY, "Zoë counted species on the reef", "train snow winter"):
        results = retriever.retrieve(query)
        assert results
        ids = [r.node.node_id for r in results]
        assert len(set(ids)) == len(ids)
        assert ids == [r.node.node_id for r in retriever.retrieve(query)]
        for result in results:
            node = result.node
            assert isinstance(node, TextNode)
            doc_id = node.ref_doc_id
            assert doc_id in corpus
            assert node.relationships[NodeRelationship.SOURCE].node_id == doc_id
            assert node.node_id == f"{doc_id}:{node.start_char_idx}:{node.end_char_idx}"
            assert corpus[doc_id][node.start_char_idx : node.end_char_idx] == node.text
            assert node.metadata["topic"] == TOPICS[doc_id]
            assert isinstance(result.score, float)
        scores = [r.score for r in results]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_similarity_top_k(core: S3Retriever, k: int) -> None:
    assert len(S3AttentionRetriever(core, similarity_top_k=k).retrieve(QUERY)) == k


def test_eq_filter_applies_before_top_k(core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(core, similarity_top_k=1)
    best_doc = retriever.retrieve(QUERY)[0].node.ref_doc_id
    other_topic = next(t for t in TOPICS.values() if t != TOPICS[best_doc])
    retriever.filters = MetadataFilters(filters=[ExactMatchFilter(key="topic", value=other_topic)])
    results = retriever.retrieve(QUERY)
    # Filtering after ranking would leave nothing: the best span is in another topic.
    assert len(results) == 1
    assert TOPICS[results[0].node.ref_doc_id] == other_topic


def test_in_filter_applies_before_top_k(core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(core, similarity_top_k=2)
    top = {r.node.ref_doc_id for r in retriever.retrieve(QUERY)}
    allowed = [doc for doc in TOPICS if doc not in top]
    retriever.filters = MetadataFilters(
        filters=[MetadataFilter(key="doc_id", value=allowed, operator=FilterOperator.IN)]
    )
    results = retriever.retrieve(QUERY)
    assert len(results) == 2
    assert {r.node.ref_doc_id for r in results} <= set(allowed)


def test_filters_combine_with_and(core: S3Retriever) -> None:
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="topic", value="city"),
            MetadataFilter(key="year", value=[2021, 2023, 2024], operator=FilterOperator.IN),
        ],
        condition=FilterCondition.AND,
    )
    results = S3AttentionRetriever(core, filters=filters).retrieve(QUERY)
    assert results and {r.node.ref_doc_id for r in results} == {"trains"}


def test_filter_translation() -> None:
    assert to_core_filters(None) is None
    assert to_core_filters(MetadataFilters(filters=[])) is None
    nested = MetadataFilters(
        filters=[
            ExactMatchFilter(key="topic", value="city"),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="year", value=[2022, 2023], operator=FilterOperator.IN),
                    MetadataFilter(key="year", value=[2023, 2024], operator="in"),
                ]
            ),
        ]
    )
    assert to_core_filters(nested) == {"topic": ["city"], "year": [2023]}


@pytest.mark.parametrize(
    "filters",
    [
        MetadataFilters(filters=[MetadataFilter(key="year", value=2022, operator=">")]),
        MetadataFilters(filters=[MetadataFilter(key="topic", value="city", operator="!=")]),
        MetadataFilters(filters=[MetadataFilter(key="topic", value=["a"], operator="nin")]),
        MetadataFilters(filters=[MetadataFilter(key="topic", value=["city"])]),
        MetadataFilters(
            filters=[MetadataFilter(key="a", value=1), MetadataFilter(key="b", value=2)],
            condition=FilterCondition.OR,
        ),
    ],
)
def test_unsupported_filters_are_refused(core: S3Retriever, filters: MetadataFilters) -> None:
    with pytest.raises(NotImplementedError, match="S3AttentionRetriever|EQ with a list"):
        S3AttentionRetriever(core, filters=filters)


def test_bad_settings_are_refused(core: S3Retriever) -> None:
    with pytest.raises(ValueError, match="similarity_top_k"):
        S3AttentionRetriever(core, similarity_top_k=0)
    with pytest.raises(ValueError, match="mode"):
        S3AttentionRetriever(core, mode="dense")  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        S3AttentionRetriever(object())  # type: ignore[arg-type]


def test_from_documents_and_insert_nodes(make_core: Callable[[], S3Retriever]) -> None:
    docs = [
        Document(text="Red apples grow in the orchard.", id_="apples", metadata={"kind": "fruit"}),
        Document(text="The train leaves at seven.", id_="train"),
    ]
    retriever = S3AttentionRetriever.from_documents(docs, retriever=make_core(), mode="bm25")
    assert retriever.retriever.doc_ids == ["apples", "train"]
    chunk = TextNode(
        text="Snow closes the mountain line in winter.",
        id_="chunk-1",
        metadata={"kind": "weather"},
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id="report")},
    )
    loose = TextNode(text="Bees make honey from nectar.", id_="bees")
    assert retriever.insert_nodes([chunk, loose]) == ["report", "bees"]
    results = retriever.retrieve("apples orchard")
    assert results[0].node.ref_doc_id == "apples"
    assert results[0].node.metadata == {"kind": "fruit"}
    snow = retriever.retrieve("snow winter line")[0].node
    assert snow.ref_doc_id == "report" and snow.metadata == {"kind": "weather"}
    source = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id="d")}
    twin = TextNode(text="x", relationships=source)
    other = TextNode(text="y", relationships=source)
    with pytest.raises(ValueError, match="whole documents"):
        retriever.add_documents([twin, other])


def test_persist_round_trip(core: S3Retriever, tiny_model_dir: Path, tmp_path: Path) -> None:
    filters = MetadataFilters(
        filters=[MetadataFilter(key="topic", value=["city", "nature"], operator="in")]
    )
    original = S3AttentionRetriever(
        core, similarity_top_k=3, token_budget=200, mode="bm25", filters=filters
    )
    original.persist(tmp_path / "store")
    loaded = S3AttentionRetriever.from_persist_dir(tmp_path / "store", model_path=tiny_model_dir)
    assert (loaded.similarity_top_k, loaded.token_budget, loaded.mode) == (3, 200, "bm25")
    assert loaded.filters == filters
    assert loaded.retriever.doc_ids == core.doc_ids
    before = original.retrieve(QUERY)
    after = loaded.retrieve(QUERY)
    assert [r.node.node_id for r in after] == [r.node.node_id for r in before]
    assert [r.node.text for r in after] == [r.node.text for r in before]
    # Overrides win over saved settings; a plain core index folder loads too.
    core.save(tmp_path / "plain")
    plain = S3AttentionRetriever.from_persist_dir(
        tmp_path / "plain", model_path=tiny_model_dir, similarity_top_k=1
    )
    assert plain.similarity_top_k == 1 and len(plain.retrieve(QUERY)) == 1


async def test_aretrieve_matches_retrieve(core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(core, similarity_top_k=3)
    sync_ids = [r.node.node_id for r in retriever.retrieve(QUERY)]
    assert [r.node.node_id for r in await retriever.aretrieve(QUERY)] == sync_ids


async def test_aretrieve_does_not_block_the_event_loop(
    core: S3Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_retrieve = core.retrieve

    def slow_retrieve(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # stands in for a long model forward pass
        return real_retrieve(*args, **kwargs)

    monkeypatch.setattr(core, "retrieve", slow_retrieve)
    retriever = S3AttentionRetriever(core, similarity_top_k=2)
    ticks = 0
    done = asyncio.Event()

    async def ticker() -> None:
        nonlocal ticks
        while not done.is_set():
            ticks += 1
            await asyncio.sleep(0.01)

    task = asyncio.create_task(ticker())
    await asyncio.sleep(0)
    started = ticks
    results = await retriever.aretrieve(QUERY)
    done.set()
    await task
    assert len(results) == 2
    # A blocking call would freeze the ticker for the whole 0.5 s.
    assert ticks - started >= 10
