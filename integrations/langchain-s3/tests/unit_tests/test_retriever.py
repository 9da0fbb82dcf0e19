"""S3AttentionRetriever over a tiny offline core retriever."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from s3_retriever import S3Retriever

from langchain_s3 import S3AttentionRetriever

QUERY = "How many nurses does the hospital budget add?"
SPAN_KEYS = {"doc_id", "start_index", "end_index", "score", "scores", "span_id"}


def test_exports() -> None:
    import langchain_s3

    assert set(langchain_s3.__all__) == {"S3AttentionRetriever", "hit_to_document"}
    assert issubclass(S3AttentionRetriever, BaseRetriever)


def test_metadata_fields(core: S3Retriever) -> None:
    docs = S3AttentionRetriever(retriever=core, k=4).invoke(QUERY)
    assert docs and all(isinstance(doc, Document) for doc in docs)
    for doc in docs:
        meta = doc.metadata
        span = meta["s3"]
        assert set(span) == SPAN_KEYS | {"relevance"}
        assert set(meta) == {"topic", "year", "source", "start_index", "s3"}
        span_id = f"{span['doc_id']}:{span['start_index']}:{span['end_index']}"
        assert doc.id == span["span_id"] == span_id
        assert meta["start_index"] == span["start_index"]  # where LangChain's splitters put it
        expected_source = "trains.txt" if span["doc_id"] == "trains" else span["doc_id"]
        assert meta["source"] == expected_source
        assert isinstance(span["score"], float)
        assert set(span["scores"]) == {"s3", "bm25"}
    assert len({doc.id for doc in docs}) == len(docs)


def test_offsets_slice_the_source_exactly(core: S3Retriever, corpus: dict[str, str]) -> None:
    retriever = S3AttentionRetriever(retriever=core, k=4, token_budget=48)
    for query in (QUERY, "Zoë counted species on the reef", "train snow winter"):
        for doc in retriever.invoke(query):
            span = doc.metadata["s3"]
            source = corpus[span["doc_id"]]
            assert source[span["start_index"] : span["end_index"]] == doc.page_content


def test_results_are_best_score_first(core: S3Retriever) -> None:
    docs = S3AttentionRetriever(retriever=core).invoke(QUERY)
    scores = [doc.metadata["s3"]["score"] for doc in docs]
    assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("k", [1, 2, 3])
def test_k_in_constructor_and_per_call(core: S3Retriever, k: int) -> None:
    assert len(S3AttentionRetriever(retriever=core, k=k).invoke(QUERY)) == k
    assert len(S3AttentionRetriever(retriever=core, k=4).invoke(QUERY, k=k)) == k


def test_per_call_options(core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(retriever=core)
    city = retriever.invoke(QUERY, filters={"topic": "city"})
    assert city and {doc.metadata["s3"]["doc_id"] for doc in city} <= {"hospital", "trains"}
    some = retriever.invoke(QUERY, filters={"doc_id": ["rivers", "ocean"]})
    assert some and {doc.metadata["s3"]["doc_id"] for doc in some} <= {"rivers", "ocean"}
    assert retriever.invoke(QUERY, filters={"topic": "nowhere"}) == []
    bm25 = retriever.invoke(QUERY, mode="bm25")
    assert bm25 and all(set(doc.metadata["s3"]["scores"]) == {"bm25"} for doc in bm25)
    short = retriever.invoke(QUERY, token_budget=8, k=4)
    wide = retriever.invoke(QUERY, token_budget=1024, k=4)
    assert sum(len(d.page_content) for d in short) < sum(len(d.page_content) for d in wide)
    # The instance keeps its own settings after per-call overrides.
    assert retriever.filters is None and retriever.mode == "hybrid" and retriever.k == 4


def test_constructor_filters_apply(core: S3Retriever) -> None:
    docs = S3AttentionRetriever(retriever=core, filters={"year": [2021, 2024]}).invoke(QUERY)
    assert docs and {doc.metadata["s3"]["doc_id"] for doc in docs} <= {"rivers", "ocean"}


def test_bad_arguments_are_refused(core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(retriever=core)
    with pytest.raises(TypeError, match="top_k"):
        retriever.invoke(QUERY, top_k=2)
    with pytest.raises(ValueError, match="k must be"):
        retriever.invoke(QUERY, k=0)
    with pytest.raises(ValueError):
        S3AttentionRetriever(retriever=core, k=0)
    with pytest.raises(ValueError):
        S3AttentionRetriever(retriever=core, mode="dense")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        S3AttentionRetriever(retriever=object())  # type: ignore[arg-type]


def test_from_texts_and_add_documents(make_core: Callable[[], S3Retriever]) -> None:
    retriever = S3AttentionRetriever.from_texts(
        ["Red apples grow in the orchard.", "The train leaves at seven."],
        metadatas=[{"kind": "fruit"}, None],
        ids=["a", "b"],
        retriever=make_core(),
        k=1,
    )
    assert retriever.k == 1 and retriever.retriever.doc_ids == ["a", "b"]
    ids = retriever.add_documents([Document(page_content="Snow closes the line.", id="c")])
    assert ids == ["c"]
    docs = retriever.invoke("apples", k=3, mode="bm25")
    assert docs[0].metadata["s3"]["doc_id"] == "a" and docs[0].metadata["kind"] == "fruit"


def test_each_given_id_is_kept_when_some_documents_have_none(
    make_core: Callable[[], S3Retriever],
) -> None:
    retriever = S3AttentionRetriever(retriever=make_core())
    ids = retriever.add_documents(
        [
            Document(page_content="Red apples grow in the orchard.", id="apples"),
            Document(page_content="The train leaves at seven."),
            Document(page_content="Snow closes the line.", id="snow"),
        ]
    )
    assert ids[0] == "apples" and ids[2] == "snow"
    assert ids[1] and ids[1] not in ("apples", "snow")
    assert retriever.retriever.doc_ids == ids
    explicit = retriever.add_documents([Document(page_content="Bees.", id="x")], ids=["bees"])
    assert explicit == ["bees"]  # ids= wins over Document.id


def test_user_metadata_is_never_overwritten(make_core: Callable[[], S3Retriever]) -> None:
    own = {"score": "five stars", "doc_id": "isbn-1", "start_index": 900, "source": "shelf"}
    retriever = S3AttentionRetriever.from_texts(
        ["Red apples grow in the orchard."], metadatas=[own], ids=["a"], retriever=make_core()
    )
    doc = retriever.invoke("apples", mode="bm25")[0]
    assert {key: doc.metadata[key] for key in own} == own
    assert doc.metadata["s3"]["doc_id"] == "a" and doc.metadata["s3"]["start_index"] == 0
    with pytest.raises(ValueError, match="metadata key 's3'"):
        retriever.add_documents([Document(page_content="x", metadata={"s3": 1})])


def test_from_documents_upsert_and_delete(make_core: Callable[[], S3Retriever]) -> None:
    retriever = S3AttentionRetriever.from_documents(
        [
            Document(page_content="Red apples grow in the orchard.", id="fruit"),
            Document(page_content="The train leaves at seven.", id="train"),
        ],
        retriever=make_core(),
        mode="bm25",
        k=4,
    )
    assert retriever.mode == "bm25" and retriever.retriever.doc_ids == ["fruit", "train"]
    # An id already indexed is replaced, as LangChain vector stores do.
    new = Document(page_content="Yellow pears ripen in autumn.", id="fruit", metadata={"v": 2})
    assert retriever.add_documents([new]) == ["fruit"]
    assert retriever.retriever.doc_ids == ["train", "fruit"]
    assert retriever.invoke("apples orchard") == []
    pears = retriever.invoke("pears autumn")
    assert [d.metadata["s3"]["doc_id"] for d in pears] == ["fruit"]
    assert pears[0].metadata["v"] == 2
    assert retriever.delete(["fruit", "unknown"]) is True
    assert retriever.delete(["fruit"]) is False
    assert retriever.retriever.doc_ids == ["train"]
    with pytest.raises(TypeError, match="list of ids"):
        retriever.delete("train")  # type: ignore[arg-type]


def test_from_index_round_trip(core: S3Retriever, tiny_model_dir: Path, tmp_path: Path) -> None:
    core.save(tmp_path / "index")
    loaded = S3AttentionRetriever.from_index(tmp_path / "index", model_path=tiny_model_dir, k=2)
    before = S3AttentionRetriever(retriever=core, k=2).invoke(QUERY, mode="bm25")
    after = loaded.invoke(QUERY, mode="bm25")
    assert [d.id for d in after] == [d.id for d in before]
    assert [d.page_content for d in after] == [d.page_content for d in before]


async def test_ainvoke_matches_invoke(core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(retriever=core, k=3)
    sync_docs = retriever.invoke(QUERY)
    async_docs = await retriever.ainvoke(QUERY)
    assert [d.id for d in async_docs] == [d.id for d in sync_docs]
    assert len(await retriever.ainvoke(QUERY, k=1)) == 1


async def test_ainvoke_does_not_block_the_event_loop(
    core: S3Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    real_retrieve = core.retrieve

    def slow_retrieve(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.5)  # stands in for a long model forward pass
        return real_retrieve(*args, **kwargs)

    monkeypatch.setattr(core, "retrieve", slow_retrieve)
    retriever = S3AttentionRetriever(retriever=core, k=2)
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
    docs = await retriever.ainvoke(QUERY)
    done.set()
    await task
    assert len(docs) == 2
    # A blocking call would freeze the ticker for the whole 0.5 s.
    assert ticks - started >= 10
