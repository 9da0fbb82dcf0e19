"""LlamaIndex ``MetadataFilters`` in the core filter language (``s3_retriever/search/filters.py``).

Every standard ``FilterOperator`` and every ``FilterCondition`` (``AND``, ``OR``, ``NOT``) has a
core counterpart, nested groups included, so a filter selects the same documents as it would in a
``VectorStoreIndex`` (the adapter's ``tests/test_filters.py`` checks each operator against one).
"""

from __future__ import annotations

from typing import Any

from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)

CORE_OPERATORS: dict[FilterOperator, str] = {
    FilterOperator.EQ: "$eq",
    FilterOperator.NE: "$ne",
    FilterOperator.GT: "$gt",
    FilterOperator.GTE: "$gte",
    FilterOperator.LT: "$lt",
    FilterOperator.LTE: "$lte",
    FilterOperator.IN: "$in",
    FilterOperator.NIN: "$nin",
    FilterOperator.ANY: "$any",
    FilterOperator.ALL: "$all",
    FilterOperator.CONTAINS: "$contains",
    FilterOperator.TEXT_MATCH: "$text_match",
    FilterOperator.TEXT_MATCH_INSENSITIVE: "$text_match_insensitive",
    FilterOperator.IS_EMPTY: "$empty",
}
"""Each LlamaIndex operator and the core operator that applies it."""


def to_core_filters(filters: MetadataFilters | None) -> dict[str, Any] | None:
    """Translate LlamaIndex metadata filters into a core filter (``None`` when empty).

    ``AND`` becomes ``$and``, ``OR`` ``$or`` and ``NOT`` (none of the filters holds) ``$not``
    over ``$or``. The key ``doc_id`` matches document ids.

    Raises:
        NotImplementedError: an operator or condition this version does not know.
    """
    if filters is None or not filters.filters:
        return None
    return _group(filters)


def _group(filters: MetadataFilters) -> dict[str, Any]:
    parts = [
        _group(item) if isinstance(item, MetadataFilters) else _single(item)
        for item in filters.filters
    ]
    condition = filters.condition or FilterCondition.AND
    if condition == FilterCondition.AND:
        return {"$and": parts}
    if condition == FilterCondition.OR:
        return {"$or": parts}
    if condition == FilterCondition.NOT:
        return {"$not": {"$or": parts}}
    raise NotImplementedError(f"unknown filter condition {condition!r}; use AND, OR or NOT")


def _single(item: MetadataFilter) -> dict[str, Any]:
    operator = CORE_OPERATORS.get(FilterOperator(item.operator))
    if operator is None:
        raise NotImplementedError(
            f"S3AttentionRetriever cannot apply the {item.operator!r} operator on {item.key!r}; "
            f"supported: {', '.join(op.name for op in CORE_OPERATORS)}"
        )
    value = True if operator == "$empty" else item.value
    return {item.key: {operator: value}}
