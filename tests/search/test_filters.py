"""The metadata filter language (s3_retriever/search/filters.py): operators, groups, missing."""

from __future__ import annotations

import warnings
from typing import Any

import pytest

from s3_retriever.search.filters import OPERATORS, check_filters, document_mask

DOCS: dict[str, dict[str, Any]] = {
    "a": {"year": 2020, "topic": "city", "tags": ["x", "y"], "title": "The City Budget"},
    "b": {"year": 2022, "topic": "nature", "tags": ["y"], "title": "Rivers of the world"},
    "c": {"year": 2024, "topic": "city", "tags": [], "title": ""},
    "d": {"topic": "sport", "title": "Cup final"},
}


def passing(filters: Any) -> list[str]:
    ids = list(DOCS)
    mask = document_mask([DOCS[i] for i in ids], ids, filters)
    return [doc_id for doc_id, keep in zip(ids, mask, strict=True) if keep]


CASES: list[tuple[dict[str, Any], list[str]]] = [
    ({"topic": "city"}, ["a", "c"]),
    ({"topic": ["city", "sport"]}, ["a", "c", "d"]),
    ({"year": {"$eq": 2022}}, ["b"]),
    ({"year": {"$ne": 2022}}, ["a", "c", "d"]),  # a missing key passes $ne
    ({"year": {"$gt": 2020}}, ["b", "c"]),
    ({"year": {"$gte": 2020}}, ["a", "b", "c"]),
    ({"year": {"$lt": 2024}}, ["a", "b"]),
    ({"year": {"$lte": 2024}}, ["a", "b", "c"]),
    ({"year": {"$gte": 2021, "$lt": 2024}}, ["b"]),
    ({"topic": {"$in": ["nature", "sport"]}}, ["b", "d"]),
    ({"year": {"$nin": [2020, 2024]}}, ["b", "d"]),
    ({"tags": {"$contains": "y"}}, ["a", "b"]),
    ({"tags": {"$any": ["x", "z"]}}, ["a"]),
    ({"tags": {"$all": ["x", "y"]}}, ["a"]),
    ({"title": {"$text_match": "City"}}, ["a"]),
    ({"title": {"$text_match": "city"}}, []),
    ({"title": {"$text_match_insensitive": "city"}}, ["a"]),
    ({"tags": {"$empty": True}}, ["c", "d"]),
    ({"tags": {"$empty": False}}, ["a", "b"]),
    ({"topic": {"$gt": 3}}, []),  # a string never compares with a number
    ({"doc_id": {"$in": ["b", "d"]}}, ["b", "d"]),
    ({"$or": [{"topic": "sport"}, {"year": {"$gte": 2024}}]}, ["c", "d"]),
    ({"$and": [{"topic": "city"}, {"year": {"$lt": 2021}}]}, ["a"]),
    ({"$not": {"topic": "city"}}, ["b", "d"]),
    (
        {"topic": "city", "$or": [{"year": 2020}, {"$not": {"tags": {"$empty": True}}}]},
        ["a"],
    ),
    ({}, ["a", "b", "c", "d"]),
]
"""Filters and the documents of :data:`DOCS` they must select."""


@pytest.mark.parametrize(("filters", "expected"), CASES)
def test_filter_selects_documents(filters: dict[str, Any], expected: list[str]) -> None:
    assert passing(filters) == expected


def test_every_operator_is_tested_above() -> None:
    used = {
        op
        for filters, _ in CASES
        for wanted in filters.values()
        if isinstance(wanted, dict)
        for op in wanted
    }
    assert set(OPERATORS) <= used


@pytest.mark.parametrize(
    ("filters", "message"),
    [
        ({"year": {"$between": [1, 2]}}, "unknown operator '\\$between'"),
        ({"year": {"$in": 2020}}, "\\$in on 'year' takes a list"),
        ({"$or": []}, "\\$or takes a non-empty list"),
        ({"$xor": [{"a": 1}]}, "unknown filter group"),
        ({"year": {}}, "operators of 'year' are empty"),
    ],
)
def test_malformed_filters_say_what_is_accepted(filters: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_filters(filters)


def test_a_filter_that_is_not_a_mapping_is_refused() -> None:
    with pytest.raises(TypeError, match="filters must be a mapping"):
        passing([("topic", "city")])
    with pytest.raises(TypeError, match="filters must be a mapping"):
        passing({"$not": ["topic"]})


def test_unknown_filter_key_warns_with_the_known_keys() -> None:
    with pytest.warns(UserWarning, match=r"\['sorce'\] appear in no document's metadata.*topic"):
        assert passing({"sorce": "a.txt"}) == []
    with pytest.warns(UserWarning, match="sorce"):
        passing({"$or": [{"topic": "city"}, {"sorce": "a.txt"}]})


def test_known_keys_and_doc_id_do_not_warn() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        passing({"topic": "city", "doc_id": "a", "tags": {"$empty": True}})
