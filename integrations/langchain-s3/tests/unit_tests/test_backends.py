"""S3AttentionRetriever over the other kinds of core retriever: a ``RemoteRetriever`` talking to
an endpoint served from this process, and a ``ShardedRetriever`` with 2 shards on a local Ray
cluster these tests start (skipped without Ray). Over either it returns the Documents it
returns over a plain ``S3Retriever`` holding the same documents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from langchain_core.documents import Document
from s3_retriever import S3Retriever, SAEBundle
from s3_retriever.distributed.testing import ray_sharded
from s3_retriever.models import LoadedModel
from s3_retriever.serving import RemoteRetriever, running
from s3_retriever.testing.plugin import CORPUS, METADATA

from langchain_s3 import S3AttentionRetriever

QUERIES = (
    "How many nurses does the hospital budget add?",
    "Zoë counted species on the reef",
    "train snow winter",
)
CASES: list[dict[str, Any]] = [
    {},
    {"k": 2, "mode": "s3", "token_budget": 64},
    {"mode": "bm25", "filters": {"topic": "city"}},
    {"k": 3, "token_budget": 48, "filters": {"year": {"$gte": 2022}}},
]
FLOATS = ("score", "scores", "relevance")

# The tiny model's relevance is flat, so many answers hold fewer spans than k; that is not
# what these tests look at.
pytestmark = pytest.mark.filterwarnings("ignore::s3_retriever.FewerHitsWarning")


def documents() -> list[Document]:
    return [Document(page_content=CORPUS[i], id=i, metadata=dict(METADATA[i])) for i in CORPUS]


def assert_same_documents(got: list[Document], want: list[Document]) -> None:
    """Same ids, texts and metadata in the same order; scores within 1e-5."""
    assert [(d.id, d.page_content) for d in got] == [(d.id, d.page_content) for d in want]
    for g, w in zip(got, want, strict=True):
        g_meta, w_meta = dict(g.metadata), dict(w.metadata)
        g_span, w_span = g_meta.pop("s3"), w_meta.pop("s3")
        assert g_meta == w_meta
        assert {k: v for k, v in g_span.items() if k not in FLOATS} == {
            k: v for k, v in w_span.items() if k not in FLOATS
        }
        assert set(g_span["scores"]) == set(w_span["scores"])
        pairs = [(g_span[k], w_span[k]) for k in ("score", "relevance")]
        pairs += [(g_span["scores"][k], w_span["scores"][k]) for k in w_span["scores"]]
        assert all(abs(a - b) <= 1e-5 for a, b in pairs)


def assert_answers_alike(got: S3AttentionRetriever, want: S3AttentionRetriever) -> None:
    found = 0
    for case in CASES:
        for query in QUERIES:
            expected = want.invoke(query, **case)
            assert_same_documents(got.invoke(query, **case), expected)
            found += len(expected)
    assert found >= len(CASES) * len(QUERIES), "cases that find little test little"


# ---------------------------------------------------------------- over an endpoint
@pytest.fixture(scope="module")
def plain(make_core: Callable[[], S3Retriever]) -> S3AttentionRetriever:
    return S3AttentionRetriever.from_documents(documents(), retriever=make_core())


@pytest.fixture(scope="module")
def endpoint(plain: S3AttentionRetriever) -> Iterator[str]:
    with running(plain.retriever) as url:
        yield url


def test_over_an_endpoint_the_documents_are_the_plain_ones(
    plain: S3AttentionRetriever, endpoint: str
) -> None:
    remote = S3AttentionRetriever(retriever=RemoteRetriever(endpoint))
    assert_answers_alike(remote, plain)
    # The fields' settings travel too, and the order is best first as over a plain retriever.
    tuned = {"k": 2, "mode": "bm25", "filters": {"topic": "nature"}}
    got = S3AttentionRetriever(retriever=RemoteRetriever(endpoint), **tuned).invoke(QUERIES[1])
    assert_same_documents(
        got, S3AttentionRetriever(retriever=plain.retriever, **tuned).invoke(QUERIES[1])
    )


async def test_ainvoke_over_an_endpoint(plain: S3AttentionRetriever, endpoint: str) -> None:
    remote = S3AttentionRetriever(retriever=RemoteRetriever(endpoint), k=3)
    want = await S3AttentionRetriever(retriever=plain.retriever, k=3).ainvoke(QUERIES[0])
    assert_same_documents(await remote.ainvoke(QUERIES[0]), want)


def test_an_endpoint_only_searches_and_says_so(endpoint: str) -> None:
    remote = S3AttentionRetriever(retriever=RemoteRetriever(endpoint))
    with pytest.raises(TypeError, match="only searches"):
        remote.add_documents([Document(page_content="x", id="x")])
    with pytest.raises(TypeError, match="only searches"):
        remote.delete(["rivers"])
    with pytest.raises(TypeError, match="only searches"):
        S3AttentionRetriever.from_texts(["x"], retriever=RemoteRetriever(endpoint))


def test_what_is_not_a_retriever_is_refused_clearly() -> None:
    with pytest.raises(ValueError, match="must be an S3Retriever, a ShardedRetriever or a"):
        S3AttentionRetriever(retriever="http://127.0.0.1:8000")  # type: ignore[arg-type]


# ---------------------------------------------------------------- over Ray shards
@pytest.fixture(scope="module")
def sharded_pair(
    tiny_parts: tuple[LoadedModel, SAEBundle],
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[S3AttentionRetriever, S3AttentionRetriever]]:
    """The adapter over 2 Ray shards and over one index, both given the same documents."""
    pytest.importorskip("ray")
    folder = tmp_path_factory.mktemp("langchain-ray") / "sharded"
    with ray_sharded(*tiny_parts, folder, tiny_model_dir) as (sharded, single):
        yield (
            S3AttentionRetriever.from_documents(documents(), retriever=sharded),
            S3AttentionRetriever.from_documents(documents(), retriever=single),
        )


def test_over_ray_shards_the_documents_are_the_plain_ones(
    sharded_pair: tuple[S3AttentionRetriever, S3AttentionRetriever],
) -> None:
    over_shards, plain = sharded_pair
    assert over_shards.retriever.num_shards == 2  # type: ignore[attr-defined]
    assert_answers_alike(over_shards, plain)


def test_upserts_and_deletes_over_ray_shards_match_one_index(
    sharded_pair: tuple[S3AttentionRetriever, S3AttentionRetriever],
) -> None:
    over_shards, plain = sharded_pair
    new = Document(
        page_content="Yellow pears ripen in autumn near the river.", id="rivers", metadata={"v": 2}
    )
    for target in (over_shards, plain):
        assert target.add_documents([new]) == ["rivers"]  # an id already indexed: replaced
        assert target.delete(["trains", "unknown"]) is True
    assert sorted(over_shards.retriever.doc_ids) == sorted(plain.retriever.doc_ids)  # type: ignore[attr-defined]
    for query in ("pears autumn river", *QUERIES):
        for case in ({}, {"mode": "bm25"}, {"mode": "s3", "k": 2}):
            assert_same_documents(over_shards.invoke(query, **case), plain.invoke(query, **case))
    assert over_shards.invoke("pears autumn", mode="bm25")[0].metadata["v"] == 2
