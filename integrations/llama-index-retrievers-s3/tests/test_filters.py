"""Every standard LlamaIndex filter selects the same documents here as in a VectorStoreIndex.

Both retrievers index the same nodes (one per document, same metadata). The VectorStoreIndex uses
a MockEmbedding and a top k above the node count, so it returns every node its filter passes;
S3AttentionRetriever runs in BM25 mode on a word every document holds, with k and budget large
enough to return a span of every document that passes. Equal document sets then mean equal
filtering.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from llama_index.core import VectorStoreIndex
from llama_index.core.embeddings import MockEmbedding
from llama_index.core.schema import TextNode
from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from s3_retriever import S3Retriever

from llama_index.retrievers.s3 import S3AttentionRetriever
from llama_index.retrievers.s3.filters import CORE_OPERATORS

WORD = "report"
"""A word in every document, so BM25 gives each one a span."""

DOCS: dict[str, tuple[str, dict[str, Any]]] = {
    "a": ("A report on the city budget.", {"year": 2020, "topic": "city", "tags": ["x", "y"]}),
    "b": ("A report on rivers and lakes.", {"year": 2022, "topic": "nature", "tags": ["y"]}),
    "c": ("A report on the new hospital.", {"year": 2024, "topic": "City Hall", "tags": []}),
    "d": ("A report on the cup final.", {"topic": "sport", "tags": ["z"]}),
    "e": ("A report on mountain trains.", {"year": 2023, "topic": "", "tags": ["x"]}),
}

FILTERS: list[tuple[str, Any, FilterOperator]] = [
    ("topic", "city", FilterOperator.EQ),
    ("year", 2022, FilterOperator.EQ),
    ("year", 2022, FilterOperator.NE),
    ("year", 2022, FilterOperator.GT),
    ("year", 2022, FilterOperator.GTE),
    ("year", 2023, FilterOperator.LT),
    ("year", 2023, FilterOperator.LTE),
    ("topic", ["city", "sport"], FilterOperator.IN),
    ("year", [2020, 2024], FilterOperator.NIN),
    ("tags", ["x", "z"], FilterOperator.ANY),
    ("tags", ["x", "y"], FilterOperator.ALL),
    ("tags", "y", FilterOperator.CONTAINS),
    ("topic", "City", FilterOperator.TEXT_MATCH),
    ("topic", "city", FilterOperator.TEXT_MATCH_INSENSITIVE),
    ("topic", None, FilterOperator.IS_EMPTY),
    ("tags", None, FilterOperator.IS_EMPTY),
]
"""One filter per standard operator (IS_EMPTY twice: an empty string and an empty list)."""


def test_every_standard_operator_is_covered() -> None:
    assert {op for _, _, op in FILTERS} == set(FilterOperator) == set(CORE_OPERATORS)


def _cases() -> list[MetadataFilters]:
    single = [
        MetadataFilters(filters=[MetadataFilter(key=key, value=value, operator=op)])
        for key, value, op in FILTERS
    ]
    pairs = [
        [FILTERS[3], FILTERS[11]],  # year > 2022, tags contains y
        [FILTERS[7], FILTERS[8]],  # topic in (city, sport), year not in (2020, 2024)
        [FILTERS[2], FILTERS[13]],  # year != 2022, topic text_match_insensitive city
    ]
    combined = [
        MetadataFilters(
            filters=[MetadataFilter(key=k, value=v, operator=op) for k, v, op in pair],
            condition=condition,
        )
        for pair in pairs
        for condition in (FilterCondition.AND, FilterCondition.OR, FilterCondition.NOT)
    ]
    return single + combined


@pytest.fixture(scope="module")
def nodes() -> list[TextNode]:
    return [TextNode(id_=doc_id, text=text, metadata=meta) for doc_id, (text, meta) in DOCS.items()]


@pytest.fixture(scope="module")
def vector_index(nodes: list[TextNode]) -> VectorStoreIndex:
    return VectorStoreIndex(nodes, embed_model=MockEmbedding(embed_dim=8))


@pytest.fixture(scope="module")
def s3_retriever(make_core: Callable[[], S3Retriever], nodes: list[TextNode]) -> Any:
    retriever = S3AttentionRetriever(make_core(), mode="bm25", similarity_top_k=20)
    retriever.token_budget = 2000
    retriever.add_documents(nodes)
    return retriever


def _name(filters: MetadataFilters) -> str:
    parts = [f"{f.key}{f.operator.value}{f.value}" for f in filters.filters]  # type: ignore[union-attr]
    return f" {filters.condition.value} ".join(parts) if filters.condition else parts[0]


@pytest.mark.parametrize("filters", _cases(), ids=_name)
def test_same_documents_as_vector_store_index(
    filters: MetadataFilters, vector_index: VectorStoreIndex, s3_retriever: Any
) -> None:
    reference = vector_index.as_retriever(similarity_top_k=20, filters=filters).retrieve(WORD)
    expected = sorted(result.node.node_id for result in reference)
    s3_retriever.filters = filters
    got = sorted({result.node.ref_doc_id for result in s3_retriever.retrieve(WORD)})
    assert got == expected
    s3_retriever.filters = None
    assert len({r.node.ref_doc_id for r in s3_retriever.retrieve(WORD)}) == len(DOCS)
