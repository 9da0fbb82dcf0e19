"""Checks on what callers hand the retriever: texts, ids, metadata and whole-number arguments.

Each refusal says what was wrong and how to pass it instead.
"""

from __future__ import annotations

import operator
import uuid
from collections.abc import Mapping, Sequence
from typing import Any

from s3_retriever.index.corpus import check_metadata
from s3_retriever.search.settings import MODES, ORDERS


def check_encodable(text: str, what: str) -> None:
    """Refuse unpaired surrogates (bytes decoded with ``errors="surrogateescape"``): the tokenizer
    cannot encode them, and no offset into such a string maps back to the source file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} holds an unpaired surrogate at character {exc.start} (invalid UTF-8 in the "
            f"source); decode the source with errors='replace' or fix its encoding first"
        ) from None


def whole_number(value: Any, what: str) -> int:
    """``value`` as an int; floats and bools are refused rather than silently truncated."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


def check_id_type(doc_id: Any, what: str) -> None:
    """Ids are str: 5 or b"x" would become "5" or "b'x'", and then delete([5]) or a doc_id filter
    of 5 would match nothing."""
    if not isinstance(doc_id, str):
        raise TypeError(f"{what} is {type(doc_id).__name__} ({doc_id!r}); ids must be str")


def check_ids_free(ids: Sequence[str], existing_ids: Sequence[str]) -> None:
    """Refuse ids the index already holds."""
    existing = set(existing_ids)
    clash = [i for i in ids if i in existing]
    if clash:
        raise ValueError(
            f"ids already indexed: {clash[:5]}; pass replace=True to replace those documents"
        )


def new_documents(
    texts: Sequence[str],
    ids: Sequence[str] | None,
    metadatas: Sequence[Mapping[str, Any] | None] | None,
    existing_ids: Sequence[str],
) -> tuple[list[str], list[str], list[dict[str, Any]]]:
    """Checked texts, ids (new UUIDs where ``ids`` is None) and metadata of documents to add."""
    if isinstance(texts, str):
        raise TypeError("add_documents takes a list of texts; wrap a single text in [ ]")
    texts = list(texts)
    for i, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
        check_encodable(text, f"texts[{i}]")
    if isinstance(ids, str):
        raise TypeError("ids must be a list of strings; wrap a single id in [ ]")
    if ids is None:
        ids_list = [uuid.uuid4().hex for _ in texts]
    else:
        ids = list(ids)
        if len(ids) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(ids)} ids")
        for i, doc_id in enumerate(ids):
            # None would silently become the id "None"; an empty id makes hit ids ambiguous.
            if doc_id is None or doc_id == "":
                raise ValueError(f"ids[{i}] is {doc_id!r}; every document needs a non-empty id")
            check_id_type(doc_id, f"ids[{i}]")
            check_encodable(doc_id, f"ids[{i}]")
        ids_list = list(ids)
    if len(set(ids_list)) != len(ids_list):
        raise ValueError("ids contain duplicates; every document needs its own id")
    check_ids_free(ids_list, existing_ids)
    if metadatas is not None and len(metadatas) != len(texts):
        raise ValueError(f"got {len(texts)} texts but {len(metadatas)} metadatas")
    metas = [
        check_metadata(m, doc_id)
        for m, doc_id in zip(metadatas or [None] * len(texts), ids_list, strict=True)
    ]
    return texts, ids_list, metas


def search_arguments(
    query: Any, top_k: Any, token_budget: Any, mode: str
) -> tuple[int | None, int]:
    """Checked ``top_k`` and ``token_budget`` of a query (the query itself checked too)."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    check_encodable(query, "query")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if top_k is not None:
        top_k = whole_number(top_k, "top_k")
        if top_k < 0:
            raise ValueError(f"top_k must be None or >= 0, got {top_k}")
    token_budget = whole_number(token_budget, "token_budget")
    if token_budget < 1:
        raise ValueError(f"token_budget must be at least 1, got {token_budget}")
    return top_k, token_budget


def retrieve_arguments(
    query: Any, top_k: Any, token_budget: Any, mode: str, order: str
) -> tuple[int | None, int] | None:
    """Checked ``top_k`` and ``token_budget`` of a ``retrieve`` call (query, mode and order
    checked too); ``None`` when the answer is empty without a search (a blank query, or
    ``top_k=0``)."""
    top_k, token_budget = search_arguments(query, top_k, token_budget, mode)
    if order not in ORDERS:
        raise ValueError(f"order must be one of {', '.join(ORDERS)}; got {order!r}")
    if not query.strip() or top_k == 0:
        return None
    return top_k, token_budget
