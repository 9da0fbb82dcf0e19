"""S3AttentionRetriever (LlamaIndex) over a tiny offline core retriever."""

from __future__ import annotations

import asyncio
import itertools
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.evaluation import RetrieverEvaluator
from llama_index.core.schema import (
    Document,
    MetadataMode,
    NodeRelationship,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores import (
    ExactMatchFilter,
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from s3_retriever import S3Retriever

from llama_index.retrievers.s3 import S3AttentionRetriever, SourceDocuments, to_core_filters

QUERY = "How many nurses does the hospital budget add?"
TOPICS = {"rivers": "nature", "hospital": "city", "trains": "city", "ocean": "nature"}


def test_exports_and_namespace_layout() -> None:
    import llama_index.retrievers.s3 as package

    assert set(package.__all__) == {
        "S3AttentionRetriever",
        "SourceDocuments",
        "hit_to_node",
        "link_neighbours",
        "to_core_filters",
    }
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
            ours = node.metadata["s3"]
            assert ours["span_id"] == node.node_id and ours["score"] == result.score
            assert set(ours["scores"]) == {"s3", "bm25"}
            assert 0.0 <= ours["relevance"] <= 1.0
            assert "s3" not in node.get_content(metadata_mode=MetadataMode.LLM)
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
                    MetadataFilter(key="year", value=2022, operator=FilterOperator.GT),
                    MetadataFilter(key="tags", operator=FilterOperator.IS_EMPTY, value=None),
                ],
                condition=FilterCondition.OR,
            ),
            MetadataFilters(
                filters=[MetadataFilter(key="year", value=[2023], operator="nin")],
                condition=FilterCondition.NOT,
            ),
        ]
    )
    assert to_core_filters(nested) == {
        "$and": [
            {"topic": {"$eq": "city"}},
            {"$or": [{"year": {"$gt": 2022}}, {"tags": {"$empty": True}}]},
            {"$not": {"$or": [{"year": {"$nin": [2023]}}]}},
        ]
    }


def test_or_and_nested_filters_apply_before_top_k(core: S3Retriever) -> None:
    filters = MetadataFilters(
        filters=[
            MetadataFilter(key="year", value=2023, operator=FilterOperator.GTE),
            MetadataFilters(
                filters=[
                    MetadataFilter(key="topic", value="city"),
                    MetadataFilter(key="year", value=2022, operator=FilterOperator.LT),
                ]
            ),
        ],
        condition=FilterCondition.OR,
    )
    results = S3AttentionRetriever(core, similarity_top_k=8, filters=filters).retrieve(QUERY)
    assert results and {r.node.ref_doc_id for r in results} <= {"trains", "ocean"}


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
    assert _own_metadata(results[0].node) == {"kind": "fruit"}
    snow = retriever.retrieve("snow winter line")[0].node
    assert snow.ref_doc_id == "report" and _own_metadata(snow) == {"kind": "weather"}
    source = {NodeRelationship.SOURCE: RelatedNodeInfo(node_id="d")}
    twin = TextNode(text="x", relationships=source)
    other = TextNode(text="y", relationships=source)
    with pytest.raises(ValueError, match="whole documents"):
        retriever.add_documents([twin, other])


def _own_metadata(node: Any) -> dict[str, Any]:
    return {key: value for key, value in node.metadata.items() if key != "s3"}


def test_insert_update_and_delete_ref_doc(make_core: Callable[[], S3Retriever]) -> None:
    retriever = S3AttentionRetriever(make_core(), mode="bm25", similarity_top_k=4)
    apples = Document(text="Red apples grow in the orchard.", id_="fruit")
    assert retriever.insert(apples) == "fruit"
    retriever.insert(Document(text="The train leaves at seven.", id_="train"))
    with pytest.raises(ValueError, match="replace"):
        retriever.insert(Document(text="Pears too.", id_="fruit"))
    retriever.update_ref_doc(
        Document(text="Yellow pears ripen in autumn.", id_="fruit", metadata={"v": 2})
    )
    assert retriever.retriever.doc_ids == ["train", "fruit"]
    assert retriever.retrieve("apples orchard") == []
    pears = retriever.retrieve("pears autumn")
    assert [r.node.ref_doc_id for r in pears] == ["fruit"]
    assert _own_metadata(pears[0].node) == {"v": 2}
    retriever.update_ref_doc(Document(text="Snow on the line.", id_="weather"))  # new id: added
    assert retriever.delete_ref_doc("fruit") is True
    assert retriever.delete_ref_doc("fruit", delete_from_docstore=True) is False
    assert retriever.retriever.doc_ids == ["train", "weather"]
    with pytest.raises(ValueError, match="metadata key 's3'"):
        retriever.insert(Document(text="x", id_="y", metadata={"s3": 1}))


def test_spans_of_one_document_link_previous_and_next(make_core: Callable[[], S3Retriever]) -> None:
    filler = "The weather was dry and nothing else happened in the village that long year. "
    text = (
        f"Apples grow in the orchard. {filler * 3}The farmers sold apples at the market. "
        f"{filler * 3}Later, apples were pressed into cider."
    )
    retriever = S3AttentionRetriever(make_core(), mode="bm25", similarity_top_k=8, token_budget=60)
    retriever.add_documents([Document(text=text, id_="farm"), Document(text="apples", id_="x")])
    results = retriever.retrieve("apples")
    spans = sorted(
        (r.node for r in results if r.node.ref_doc_id == "farm"), key=lambda n: n.start_char_idx
    )
    assert len(spans) >= 2
    assert NodeRelationship.PREVIOUS not in spans[0].relationships
    assert NodeRelationship.NEXT not in spans[-1].relationships
    for before, after in itertools.pairwise(spans):
        assert before.relationships[NodeRelationship.NEXT].node_id == after.node_id
        assert after.relationships[NodeRelationship.PREVIOUS].node_id == before.node_id
    other = next(r.node for r in results if r.node.ref_doc_id == "x")
    assert NodeRelationship.NEXT not in other.relationships
    assert NodeRelationship.PREVIOUS not in other.relationships


def test_source_documents_maps_spans_to_document_ids(core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(core, similarity_top_k=4, token_budget=256)
    spans = retriever.retrieve(QUERY)
    documents = SourceDocuments().postprocess_nodes(spans)
    expected = list(dict.fromkeys(r.node.ref_doc_id for r in spans))
    assert [d.node.node_id for d in documents] == expected
    assert documents[0].score == spans[0].score


async def test_retriever_evaluator_scores_document_ids(
    make_core: Callable[[], S3Retriever],
) -> None:
    """With SourceDocuments, RetrieverEvaluator compares document ids, not span ids."""
    retriever = S3AttentionRetriever(make_core(), mode="bm25", similarity_top_k=2)
    retriever.add_documents(
        [
            Document(text="Red apples grow in the orchard.", id_="apples"),
            Document(text="The night train leaves at seven.", id_="train"),
            Document(text="Snow closes the mountain pass.", id_="snow"),
        ]
    )
    evaluator = RetrieverEvaluator.from_metric_names(
        ["hit_rate", "mrr"], retriever=retriever, node_postprocessors=[SourceDocuments()]
    )
    result = await evaluator.aevaluate(query="when does the train leave", expected_ids=["train"])
    assert result.retrieved_ids[0] == "train"
    assert result.metric_vals_dict == {"hit_rate": 1.0, "mrr": 1.0}
    raw = RetrieverEvaluator.from_metric_names(["hit_rate"], retriever=retriever)
    spans = await raw.aevaluate(query="when does the train leave", expected_ids=["train"])
    assert spans.metric_vals_dict["hit_rate"] == 0.0  # span ids are not document ids


def test_from_persist_dir_on_a_missing_folder_advises_persist(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"S3AttentionRetriever\.persist\("):
        S3AttentionRetriever.from_persist_dir(tmp_path / "nothing-here")


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
