"""S3AttentionRetriever over the other kinds of core retriever: a ``RemoteRetriever`` talking to
an endpoint served from this process, and a ``ShardedRetriever`` with 2 shards on a local Ray
cluster these tests start (skipped without Ray). Over either it returns the nodes it returns
over a plain ``S3Retriever`` holding the same documents."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.schema import Document, NodeWithScore
from llama_index.core.vector_stores import (
    ExactMatchFilter,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from s3_retriever import S3Retriever, SAEBundle
from s3_retriever.distributed.testing import ray_sharded
from s3_retriever.models import LoadedModel
from s3_retriever.protocols import SupportsRetrieve
from s3_retriever.serving import RemoteRetriever, running
from s3_retriever.testing.plugin import CORPUS, METADATA

from llama_index.retrievers.s3 import S3AttentionRetriever

QUERIES = (
    "How many nurses does the hospital budget add?",
    "Zoë counted species on the reef",
    "train snow winter",
)
SETTINGS: list[dict[str, Any]] = [
    {},
    {"similarity_top_k": 2, "mode": "s3", "token_budget": 64},
    {
        "mode": "bm25",
        "filters": MetadataFilters(filters=[ExactMatchFilter(key="topic", value="city")]),
    },
    {
        "similarity_top_k": 3,
        "token_budget": 48,
        "filters": MetadataFilters(
            filters=[MetadataFilter(key="year", value=2022, operator=FilterOperator.GTE)]
        ),
    },
]
FLOATS = ("score", "scores", "relevance")

# The tiny model's relevance is flat, so many answers hold fewer spans than asked for; that is
# not what these tests look at.
pytestmark = pytest.mark.filterwarnings("ignore::s3_retriever.FewerHitsWarning")


def documents() -> list[Document]:
    return [Document(text=CORPUS[i], id_=i, metadata=dict(METADATA[i])) for i in CORPUS]


def assert_same_nodes(got: list[NodeWithScore], want: list[NodeWithScore]) -> None:
    """Same node ids, texts, offsets, relationships and metadata in the same order; scores
    within 1e-5."""

    def exact(result: NodeWithScore) -> tuple[Any, ...]:
        node = result.node
        meta = dict(node.metadata)
        span = meta.pop("s3")
        relations = {
            kind: getattr(info, "node_id", None) for kind, info in node.relationships.items()
        }
        fixed = {k: v for k, v in span.items() if k not in FLOATS}
        offsets = (node.start_char_idx, node.end_char_idx)  # type: ignore[attr-defined]
        return (
            node.node_id,
            node.get_content(),
            offsets,
            relations,
            meta,
            fixed,
            sorted(span["scores"]),
        )

    assert [exact(r) for r in got] == [exact(r) for r in want]
    for g, w in zip(got, want, strict=True):
        g_span, w_span = g.node.metadata["s3"], w.node.metadata["s3"]
        pairs = [(g.score, w.score), (g_span["score"], w_span["score"])]
        pairs += [(g_span["relevance"], w_span["relevance"])]
        pairs += [(g_span["scores"][k], w_span["scores"][k]) for k in w_span["scores"]]
        assert all(a is not None and b is not None and abs(a - b) <= 1e-5 for a, b in pairs)


def assert_answers_alike(got: SupportsRetrieve, want: SupportsRetrieve) -> None:
    found = 0
    for settings in SETTINGS:
        for query in QUERIES:
            expected = S3AttentionRetriever(want, **settings).retrieve(query)
            assert_same_nodes(S3AttentionRetriever(got, **settings).retrieve(query), expected)
            found += len(expected)
    assert found >= len(SETTINGS) * len(QUERIES), "settings that find little test little"


# ---------------------------------------------------------------- over an endpoint
@pytest.fixture(scope="module")
def plain(make_core: Callable[[], S3Retriever]) -> S3Retriever:
    core = make_core()
    S3AttentionRetriever.from_documents(documents(), retriever=core)
    return core


@pytest.fixture(scope="module")
def endpoint(plain: S3Retriever) -> Iterator[str]:
    with running(plain) as url:
        yield url


def test_over_an_endpoint_the_nodes_are_the_plain_ones(plain: S3Retriever, endpoint: str) -> None:
    assert_answers_alike(RemoteRetriever(endpoint), plain)


async def test_aretrieve_over_an_endpoint(plain: S3Retriever, endpoint: str) -> None:
    remote = S3AttentionRetriever(RemoteRetriever(endpoint), similarity_top_k=3)
    want = await S3AttentionRetriever(plain, similarity_top_k=3).aretrieve(QUERIES[0])
    assert_same_nodes(await remote.aretrieve(QUERIES[0]), want)


def test_an_endpoint_only_searches_and_says_so(endpoint: str, tmp_path: Path) -> None:
    remote = S3AttentionRetriever(RemoteRetriever(endpoint))
    with pytest.raises(TypeError, match="only searches"):
        remote.insert(Document(text="x", id_="x"))
    with pytest.raises(TypeError, match="only searches"):
        remote.delete_ref_doc("rivers")
    with pytest.raises(TypeError, match="persist saves an S3Retriever"):
        remote.persist(tmp_path / "saved")
    assert not (tmp_path / "saved").exists()


def test_what_is_not_a_retriever_is_refused_clearly() -> None:
    with pytest.raises(TypeError, match="must be an S3Retriever, a ShardedRetriever or a"):
        S3AttentionRetriever("http://127.0.0.1:8000")  # type: ignore[arg-type]


# ---------------------------------------------------------------- over Ray shards
@pytest.fixture(scope="module")
def sharded_pair(
    tiny_parts: tuple[LoadedModel, SAEBundle],
    tiny_model_dir: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[S3AttentionRetriever, S3AttentionRetriever]]:
    """The adapter over 2 Ray shards and over one index, both given the same documents."""
    pytest.importorskip("ray")
    folder = tmp_path_factory.mktemp("llama-ray") / "sharded"
    with ray_sharded(*tiny_parts, folder, tiny_model_dir) as (sharded, single):
        yield (
            S3AttentionRetriever.from_documents(documents(), retriever=sharded),
            S3AttentionRetriever.from_documents(documents(), retriever=single),
        )


def test_over_ray_shards_the_nodes_are_the_plain_ones(
    sharded_pair: tuple[S3AttentionRetriever, S3AttentionRetriever],
) -> None:
    over_shards, plain = sharded_pair
    assert over_shards.retriever.num_shards == 2  # type: ignore[attr-defined]
    assert_answers_alike(over_shards.retriever, plain.retriever)


def test_updates_and_deletes_over_ray_shards_match_one_index(
    sharded_pair: tuple[S3AttentionRetriever, S3AttentionRetriever],
) -> None:
    over_shards, plain = sharded_pair
    new = Document(text="Yellow pears ripen in autumn near the river.", id_="rivers")
    for target in (over_shards, plain):
        target.update_ref_doc(new)
        with pytest.raises(ValueError, match="replace=True"):
            target.insert(Document(text="x", id_="hospital"))
        assert target.delete_ref_doc("trains") is True
    assert sorted(over_shards.retriever.doc_ids) == sorted(plain.retriever.doc_ids)  # type: ignore[attr-defined]
    for query in ("pears autumn river", *QUERIES):
        for settings in ({}, {"mode": "bm25"}, {"mode": "s3", "similarity_top_k": 2}):
            got = S3AttentionRetriever(over_shards.retriever, **settings).retrieve(query)
            assert_same_nodes(
                got, S3AttentionRetriever(plain.retriever, **settings).retrieve(query)
            )
