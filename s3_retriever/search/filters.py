"""Metadata filters, applied to documents before any ranking.

A filter is a mapping; a document passes when every entry holds:

* ``{"key": value}``: the metadata value equals ``value``;
* ``{"key": [v1, v2]}``: it equals one of the values;
* ``{"key": {"$op": operand, ...}}``: every operator holds (see :data:`OPERATORS`);
* ``{"$and": [filter, ...]}``, ``{"$or": [filter, ...]}``: all / any of the nested filters;
* ``{"$not": filter}``: the nested filter does not hold.

The pseudo-key ``doc_id`` filters on document ids. A document without the key (or with the
value ``None``) passes only ``$ne``, ``$nin`` and ``{"$empty": True}``, as in LlamaIndex's
``SimpleVectorStore`` (``llama_index/core/vector_stores/utils.py``), so the LlamaIndex adapter's
translated filters pick the same documents as a ``VectorStoreIndex``. Comparing values that do
not compare (a string with a number) is no match rather than an error.

    {"year": {"$gte": 2020, "$lt": 2024}, "$or": [{"topic": "city"}, {"tags": {"$any": ["x"]}}]}
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import Any

import numpy as np

Filters = Mapping[str, Any]

DOC_ID_KEY = "doc_id"
"""The pseudo-key that matches document ids."""

_LISTS = (list, tuple, set, frozenset)


def _compare(op: Callable[[Any, Any], bool]) -> Callable[[Any, Any], bool]:
    def check(value: Any, operand: Any) -> bool:
        try:
            return bool(op(value, operand))
        except TypeError:
            return False

    return check


def _contains(container: Any, item: Any) -> bool:
    try:
        return item in container
    except TypeError:
        return False


def _text_match(value: Any, operand: Any, fold: bool) -> bool:
    if not isinstance(value, str) or not isinstance(operand, str):
        return False
    return operand.lower() in value.lower() if fold else operand in value


OPERATORS: dict[str, Callable[[Any, Any], bool]] = {
    "$eq": _compare(operator.eq),
    "$ne": _compare(operator.ne),
    "$gt": _compare(operator.gt),
    "$gte": _compare(operator.ge),
    "$lt": _compare(operator.lt),
    "$lte": _compare(operator.le),
    "$in": lambda value, operand: _contains(operand, value),
    "$nin": lambda value, operand: not _contains(operand, value),
    "$contains": lambda value, operand: _contains(value, operand),
    "$any": lambda value, operand: any(_contains(value, o) for o in operand),
    "$all": lambda value, operand: all(_contains(value, o) for o in operand),
    "$text_match": lambda value, operand: _text_match(value, operand, fold=False),
    "$text_match_insensitive": lambda value, operand: _text_match(value, operand, fold=True),
    "$empty": lambda value, operand: (value in ("", [], None)) == bool(operand),
}
"""Operators of ``{"key": {"$op": operand}}``: comparisons, ``$in``/``$nin`` (value among the
operand's items), ``$contains`` (the value, a list or string, holds the operand), ``$any`` /
``$all`` (the value holds any / all of the operand's items), ``$text_match`` (substring),
``$text_match_insensitive`` and ``$empty`` (missing, ``None``, ``""`` or ``[]``)."""

_LIST_OPERANDS = frozenset({"$in", "$nin", "$any", "$all"})
_MISSING_PASSES = frozenset({"$ne", "$nin"})
_GROUPS = ("$and", "$or")
_MISSING = object()


def _fail(message: str) -> None:
    raise ValueError(f"{message}. {_HOW}")


_HOW = (
    "Filters look like {'source': 'a.txt'}, {'year': [2020, 2021]}, {'year': {'$gte': 2020}} "
    "or {'$or': [{...}, {...}]}"
)


def check_filters(filters: Filters) -> None:
    """Refuse a malformed filter with a message that shows the accepted forms.

    Raises:
        TypeError: ``filters`` (or a nested group) is not a mapping.
        ValueError: an unknown ``$`` operator, or an operand of the wrong kind.
    """
    if not isinstance(filters, Mapping):
        raise TypeError(f"filters must be a mapping, got {type(filters).__name__}. {_HOW}")
    for key, wanted in filters.items():
        if key in _GROUPS:
            if not isinstance(wanted, _LISTS) or not wanted:
                _fail(f"{key} takes a non-empty list of filters, got {wanted!r}")
            for part in wanted:
                check_filters(part)
        elif key == "$not":
            check_filters(wanted)
        elif isinstance(key, str) and key.startswith("$"):
            _fail(f"unknown filter group {key!r}; groups are $and, $or and $not")
        elif key == DOC_ID_KEY:
            _check_doc_ids(wanted)
        elif isinstance(wanted, Mapping):
            if not wanted:
                _fail(f"the operators of {key!r} are empty")
            for op, operand in wanted.items():
                if op not in OPERATORS:
                    _fail(f"unknown operator {op!r} on {key!r}; known: {', '.join(OPERATORS)}")
                if op in _LIST_OPERANDS and not isinstance(operand, _LISTS):
                    _fail(f"{op} on {key!r} takes a list, got {operand!r}")


def _check_doc_ids(wanted: Any) -> None:
    """Ids are always str: ``{"doc_id": 5}`` would match nothing, silently."""
    operands = list(wanted.items()) if isinstance(wanted, Mapping) else [("", wanted)]
    for op, operand in operands:
        if op == "$empty":
            continue
        values = operand if isinstance(operand, _LISTS) else [operand]
        if not all(isinstance(v, str) for v in values):
            raise TypeError(f"filters['doc_id'] must be a str or a list of str, got {wanted!r}")


def filter_keys(filters: Filters) -> Iterator[str]:
    """Every metadata key a (checked) filter reads, nested groups included."""
    for key, wanted in filters.items():
        if key in _GROUPS:
            for part in wanted:
                yield from filter_keys(part)
        elif key == "$not":
            yield from filter_keys(wanted)
        else:
            yield key


def _holds(wanted: Any, value: Any) -> bool:
    if isinstance(wanted, Mapping):
        if value is _MISSING or value is None:
            return all(
                op in _MISSING_PASSES or (op == "$empty" and bool(operand))
                for op, operand in wanted.items()
            )
        return all(OPERATORS[op](value, operand) for op, operand in wanted.items())
    if value is _MISSING:
        return False
    if isinstance(wanted, _LISTS):
        return any(value == w for w in wanted)
    return bool(value == wanted)


def matches(filters: Filters, metadata: Mapping[str, Any], doc_id: str) -> bool:
    """Whether one document (its metadata and id) passes a checked filter."""
    for key, wanted in filters.items():
        if key == "$and":
            passed = all(matches(part, metadata, doc_id) for part in wanted)
        elif key == "$or":
            passed = any(matches(part, metadata, doc_id) for part in wanted)
        elif key == "$not":
            passed = not matches(wanted, metadata, doc_id)
        else:
            value = doc_id if key == DOC_ID_KEY else metadata.get(key, _MISSING)
            passed = _holds(wanted, value)
        if not passed:
            return False
    return True


def warn_unknown_keys(filters: Filters, metadatas: Sequence[Mapping[str, Any]]) -> None:
    """Warn about filter keys that no document's metadata has: most often a typo."""
    known = {key for meta in metadatas for key in meta}
    unknown = sorted({k for k in filter_keys(filters) if k != DOC_ID_KEY and k not in known})
    if unknown:
        shown = ", ".join(sorted(known)[:20]) or "none"
        warnings.warn(
            f"filter key(s) {unknown} appear in no document's metadata, so they match only as "
            f"missing values; keys in the index: {shown}",
            UserWarning,
            stacklevel=5,
        )


def document_mask(
    metadatas: Sequence[Mapping[str, Any]], doc_ids: Sequence[str], filters: Filters | None
) -> np.ndarray:
    """Boolean mask over documents: True where the filter holds.

    Warns (``UserWarning``) when a filter key is in no document's metadata.
    """
    if not filters:
        if filters is not None and not isinstance(filters, Mapping):
            check_filters(filters)
        return np.ones(len(doc_ids), dtype=bool)
    check_filters(filters)
    warn_unknown_keys(filters, metadatas)
    return np.fromiter(
        (matches(filters, meta, doc_id) for meta, doc_id in zip(metadatas, doc_ids, strict=True)),
        dtype=bool,
        count=len(doc_ids),
    )
