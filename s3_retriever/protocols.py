"""What code built on the library may rely on from a retriever, whichever kind it is.

:class:`~s3_retriever.S3Retriever` (one index in this process),
:class:`~s3_retriever.distributed.ShardedRetriever` (shards on Ray actors) and
:class:`~s3_retriever.serving.RemoteRetriever` (an ``s3-retriever serve`` endpoint) all satisfy
:class:`SupportsRetrieve`; the first two also :class:`SupportsDocuments`. The LangChain and
LlamaIndex adapters (``integrations/``) accept any of them through :func:`check_retriever`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from s3_retriever.search.filters import Filters
from s3_retriever.search.hits import Hit
from s3_retriever.search.settings import Mode, Order

RETRIEVE_KEYWORDS: tuple[str, ...] = ("top_k", "token_budget", "mode", "filters", "order")
"""Keyword arguments of ``retrieve`` that callers (the adapters, the server) pass."""

_KINDS = "an S3Retriever, a ShardedRetriever or a RemoteRetriever"


@runtime_checkable
class SupportsRetrieve(Protocol):
    """Searching: ``S3Retriever.retrieve``'s signature, and the number of documents."""

    def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        token_budget: int = 1024,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        *,
        order: Order = "document",
    ) -> list[Hit]: ...

    def __len__(self) -> int: ...


@runtime_checkable
class SupportsDocuments(SupportsRetrieve, Protocol):
    """Searching and changing the documents: ``S3Retriever.add_documents`` and ``delete``."""

    def add_documents(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        replace: bool = False,
    ) -> list[str]: ...

    def delete(self, ids: Sequence[str]) -> int: ...


def check_retriever(retriever: Any, what: str = "retriever") -> SupportsRetrieve:
    """``retriever`` when it satisfies :class:`SupportsRetrieve` and its ``retrieve`` takes every
    keyword of :data:`RETRIEVE_KEYWORDS`; otherwise a TypeError that says what is missing."""
    if not isinstance(retriever, SupportsRetrieve) or not callable(retriever.retrieve):
        raise TypeError(
            f"{what} must be {_KINDS} (anything with retrieve(query, top_k=, token_budget=, "
            f"mode=, filters=, order=) and len()), got {type(retriever).__name__}"
        )
    missing = _missing_keywords(retriever.retrieve, RETRIEVE_KEYWORDS)
    if missing:
        raise TypeError(
            f"{what}.retrieve of {type(retriever).__name__} takes no {', '.join(missing)} "
            f"keyword; give {_KINDS}, or a retrieve with S3Retriever.retrieve's keywords"
        )
    return retriever


def check_writable(retriever: SupportsRetrieve, what: str = "retriever") -> SupportsDocuments:
    """``retriever`` when it can add and delete documents (with ``replace=``); otherwise a
    TypeError that says where documents can be added instead."""
    if not isinstance(retriever, SupportsDocuments):
        raise TypeError(
            f"{what} ({type(retriever).__name__}) only searches: it has no add_documents and "
            f"delete. Add documents to the index where it is held (an S3Retriever or a "
            f"ShardedRetriever), save it, and serve it again."
        )
    missing = _missing_keywords(retriever.add_documents, ("ids", "metadatas", "replace"))
    if missing:
        raise TypeError(
            f"{what}.add_documents of {type(retriever).__name__} takes no {', '.join(missing)} "
            f"keyword; give an S3Retriever or a ShardedRetriever"
        )
    return retriever


def _missing_keywords(function: Any, names: Sequence[str]) -> list[str]:
    """Which of ``names`` ``function`` cannot take as keywords (none when it takes ``**``)."""
    try:
        parameters = inspect.signature(function).parameters
    except (TypeError, ValueError):  # no signature to read (a C function): trust the call
        return []
    if any(p.kind is inspect.Parameter.VAR_KEYWORD for p in parameters.values()):
        return []
    return [
        name
        for name in names
        if name not in parameters or parameters[name].kind is inspect.Parameter.POSITIONAL_ONLY
    ]
