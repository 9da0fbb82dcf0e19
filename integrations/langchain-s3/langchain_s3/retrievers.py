"""LangChain retriever over any s3-retriever search backend: an :class:`s3_retriever.S3Retriever`, a
``ShardedRetriever`` (shards on Ray actors) or a ``RemoteRetriever`` (an ``s3-retriever serve``
endpoint); see :mod:`s3_retriever.protocols`.

Each result is one evidence span, not a whole document: ``page_content`` is the exact slice
``source[start_index:end_index]`` of the document it comes from.
"""

from __future__ import annotations

import asyncio
import os
import uuid
import warnings
from collections.abc import Mapping, Sequence
from typing import Any, Literal

from langchain_core.callbacks import (
    AsyncCallbackManagerForRetrieverRun,
    CallbackManagerForRetrieverRun,
)
from langchain_core.documents import Document
from langchain_core.retrievers import BaseRetriever
from pydantic import ConfigDict, Field, field_validator
from s3_retriever import Hit, S3Retriever
from s3_retriever.protocols import SupportsRetrieve, check_retriever, check_writable

Mode = Literal["hybrid", "s3", "bm25"]

_CALL_OPTIONS = frozenset({"k", "token_budget", "mode", "filters"})
# Keyword arguments LangChain itself may forward from ``invoke``; they carry no search setting.
_IGNORED_OPTIONS = frozenset({"verbose"})


RESERVED_KEY = "s3"
"""Metadata key that holds the span's own fields; refused in indexed metadata."""


def hit_to_document(hit: Hit) -> Document:
    """Translate one core :class:`~s3_retriever.Hit` into a LangChain ``Document``.

    The metadata is the source document's metadata, never overwritten, plus:

    * ``s3``: the span's fields ``doc_id``, ``span_id``, ``start_index``, ``end_index``,
      ``score``, ``scores`` (component scores ``s3`` / ``bm25``) and ``relevance`` (in [0, 1]);
    * ``start_index``: the span's start in the document, where LangChain's text splitters put
      it (``add_start_index=True``), unless the metadata already has one;
    * ``source``: the document id, unless the metadata already has a ``source``.
    """
    metadata: dict[str, Any] = dict(hit.metadata)
    metadata.setdefault("source", hit.doc_id)
    metadata.setdefault("start_index", hit.start_char)
    span = {
        "doc_id": hit.doc_id,
        "span_id": hit.id,
        "start_index": hit.start_char,
        "end_index": hit.end_char,
        "score": hit.score,
        "scores": dict(hit.scores),
        "relevance": hit.relevance,
    }
    if RESERVED_KEY in metadata:
        warnings.warn(
            f"document {hit.doc_id!r} has its own metadata key {RESERVED_KEY!r}; the span's "
            f"fields are left out of its Document",
            UserWarning,
            stacklevel=2,
        )
    else:
        metadata[RESERVED_KEY] = span
    return Document(page_content=hit.text, id=hit.id, metadata=metadata)


class S3AttentionRetriever(BaseRetriever):
    """Evidence spans from long documents, ranked by a language model's own attention.

    Setup:
        Install ``langchain-s3`` (and ``s3-retriever`` with its default model)::

            pip install -e integrations/langchain-s3

    Instantiate:
        .. code-block:: python

            from langchain_s3 import S3AttentionRetriever

            retriever = S3AttentionRetriever.from_texts(texts, k=4)
            # or: S3AttentionRetriever.from_index("path/to/index")
            # or: S3AttentionRetriever(retriever=my_s3_retriever), where my_s3_retriever is
            # an S3Retriever, a ShardedRetriever or a RemoteRetriever("http://host:8000")

    Invoke:
        .. code-block:: python

            docs = retriever.invoke("Who founded the company?", k=2)
            for doc in docs:
                span = doc.metadata["s3"]
                print(span["doc_id"], span["start_index"], span["score"], doc.page_content)

    Results are ordered best score first. Every span's text is exactly
    ``source_text[start_index:end_index]`` (``doc.metadata["s3"]``, see
    :func:`hit_to_document`). Retrieval is blocking model work; the async path runs it in a
    worker thread so the event loop keeps running.
    """

    model_config = ConfigDict(arbitrary_types_allowed=True)

    retriever: SupportsRetrieve
    """The core retriever that answers: an :class:`s3_retriever.S3Retriever`, a
    ``ShardedRetriever`` or a ``RemoteRetriever`` (any :class:`s3_retriever.protocols.
    SupportsRetrieve`). Adding and deleting documents needs one that holds the index (the first
    two)."""
    k: int = Field(default=4, ge=1)
    """Maximum number of spans to return; override per call with ``invoke(query, k=...)``."""
    token_budget: int = Field(default=1024, ge=1)
    """Total model tokens of the returned spans; override per call with ``token_budget=...``."""
    mode: Mode = "hybrid"
    """``hybrid`` (attention + BM25), ``s3`` (attention only) or ``bm25``."""
    filters: dict[str, Any] | None = None
    """Metadata filters applied before ranking, in the core's filter language
    (``s3_retriever/search/filters.py``): ``{"key": value}``, ``{"key": [v1, v2]}`` (any of),
    ``{"year": {"$gte": 2020}}`` and the other ``$`` operators, ``{"$or": [...]}``; ``doc_id``
    filters on document ids."""

    @field_validator("retriever", mode="before")
    @classmethod
    def _is_a_retriever(cls, value: Any) -> SupportsRetrieve:
        try:
            return check_retriever(value)
        except TypeError as exc:  # pydantic reports ValueError, not TypeError, as invalid input
            raise ValueError(str(exc)) from None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_index(
        cls,
        path: str | os.PathLike[str],
        *,
        model_path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        **kwargs: Any,
    ) -> S3AttentionRetriever:
        """Open an index saved with ``S3Retriever.save`` (or the ``s3-retriever index`` CLI).

        Args:
            path: the index directory.
            model_path: the model folder, for an index not built with the bundled model.
            device: torch device for question encoding.
            **kwargs: fields of this class (``k``, ``token_budget``, ``mode``, ``filters``).
        """
        core = S3Retriever.load(path, model_path=model_path, device=device)
        return cls(retriever=core, **kwargs)

    @classmethod
    def from_texts(
        cls,
        texts: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        ids: Sequence[str | None] | None = None,
        *,
        retriever: SupportsRetrieve | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> S3AttentionRetriever:
        """Index ``texts`` and return a retriever over them.

        Args:
            texts: the documents.
            metadatas: one JSON-serialisable dict (or ``None``) per text.
            ids: one id per text (``None`` or omitted: a new UUID); an id already indexed in
                ``retriever`` is replaced.
            retriever: an existing core retriever to add the texts to (an ``S3Retriever`` or a
                ``ShardedRetriever``); by default a new ``S3Retriever.from_pretrained()`` (the
                bundled model and SAEs).
            retriever_kwargs: keyword arguments for ``S3Retriever.from_pretrained`` (for example
                ``model_path``, ``sae_path``, ``device``) when no ``retriever`` is given.
            **kwargs: fields of this class (``k``, ``token_budget``, ``mode``, ``filters``).
        """
        if isinstance(texts, str):
            raise TypeError("from_texts takes a list of texts; wrap a single text in [ ]")
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(metadatas)} metadatas")
        documents = [
            Document(page_content=text, metadata=dict(meta or {}))
            for text, meta in zip(texts, metadatas or [None] * len(texts), strict=True)
        ]
        return cls.from_documents(
            documents, ids=ids, retriever=retriever, retriever_kwargs=retriever_kwargs, **kwargs
        )

    @classmethod
    def from_documents(
        cls,
        documents: Sequence[Document],
        *,
        ids: Sequence[str | None] | None = None,
        retriever: SupportsRetrieve | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> S3AttentionRetriever:
        """Index LangChain ``Document``s and return a retriever over them.

        Args:
            documents: whole documents; S3 picks spans itself, so there is no need to split.
            ids: one id (or ``None``) per document, else each ``Document.id``; see
                :meth:`add_documents`.
            retriever, retriever_kwargs, **kwargs: as for :meth:`from_texts`.
        """
        if retriever is None:
            retriever = S3Retriever.from_pretrained(**dict(retriever_kwargs or {}))
        elif retriever_kwargs:
            raise ValueError("pass either retriever or retriever_kwargs, not both")
        instance = cls(retriever=retriever, **kwargs)
        instance.add_documents(documents, ids=ids)
        return instance

    def add_documents(
        self, documents: Sequence[Document], *, ids: Sequence[str | None] | None = None
    ) -> list[str]:
        """Index LangChain documents; an id already indexed is replaced (an upsert).

        Each document's id is ``ids[i]`` when given, else its ``Document.id``, else a new UUID;
        the ids given are kept even when other documents have none. The metadata is kept; it
        may not use the key ``"s3"``, which results use for the span's fields. A retriever that
        only searches (a ``RemoteRetriever``) refuses with a TypeError.

        Returns the ids of the indexed documents, in order.
        """
        core = check_writable(self.retriever)
        documents = list(documents)
        if ids is not None and len(ids) != len(documents):
            raise ValueError(f"got {len(documents)} documents but {len(ids)} ids")
        given = list(ids) if ids is not None else [doc.id for doc in documents]
        chosen = [doc_id or uuid.uuid4().hex for doc_id in given]
        for doc, doc_id in zip(documents, chosen, strict=True):
            if RESERVED_KEY in doc.metadata:
                raise ValueError(
                    f"document {doc_id!r} uses the metadata key {RESERVED_KEY!r}, which results "
                    f"use for the span's fields; rename that key"
                )
        return core.add_documents(
            [doc.page_content for doc in documents],
            ids=chosen,
            metadatas=[dict(doc.metadata) for doc in documents],
            replace=True,
        )

    def delete(self, ids: Sequence[str]) -> bool:
        """Remove documents (all their spans) by id; True when any of them was indexed."""
        if isinstance(ids, str):
            raise TypeError("delete takes a list of ids; wrap a single id in [ ]")
        return check_writable(self.retriever).delete(list(ids)) > 0

    # ------------------------------------------------------------------ retrieval
    def _search_kwargs(self, overrides: Mapping[str, Any]) -> dict[str, Any]:
        """Core ``retrieve`` arguments: this instance's fields updated by per-call overrides."""
        unknown = set(overrides) - _CALL_OPTIONS - _IGNORED_OPTIONS
        if unknown:
            raise TypeError(
                f"unknown retriever argument(s) {sorted(unknown)}; "
                f"supported per call: {sorted(_CALL_OPTIONS)}"
            )
        options = {name: overrides.get(name, getattr(self, name)) for name in _CALL_OPTIONS}
        k = options["k"]
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"k must be a positive int, got {k!r}")
        return {
            "top_k": k,
            "token_budget": options["token_budget"],
            "mode": options["mode"],
            "filters": options["filters"],
            "order": "score",  # best first; ties keep document order
        }

    @staticmethod
    def _to_documents(hits: Sequence[Hit]) -> list[Document]:
        return [hit_to_document(hit) for hit in hits]

    def _get_relevant_documents(
        self, query: str, *, run_manager: CallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """Retrieve spans for ``query``; ``kwargs`` may override k, token_budget, mode, filters."""
        hits = self.retriever.retrieve(query, **self._search_kwargs(kwargs))
        return self._to_documents(hits)

    async def _aget_relevant_documents(
        self, query: str, *, run_manager: AsyncCallbackManagerForRetrieverRun, **kwargs: Any
    ) -> list[Document]:
        """Like the sync path, with the blocking model work in a worker thread."""
        search = self._search_kwargs(kwargs)
        hits = await asyncio.to_thread(self.retriever.retrieve, query, **search)
        return self._to_documents(hits)
