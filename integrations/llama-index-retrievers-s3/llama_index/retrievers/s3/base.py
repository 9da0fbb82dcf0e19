"""LlamaIndex retriever over any s3-retriever search backend: an :class:`s3_retriever.S3Retriever`,
a ``ShardedRetriever`` (shards on Ray actors) or a ``RemoteRetriever`` (an ``s3-retriever serve``
endpoint); see :mod:`s3_retriever.protocols`.

Every result is one evidence span: a ``TextNode`` whose text is exactly
``source[start_char_idx:end_char_idx]`` of the indexed document named by its ``SOURCE``
relationship, with the span id ``"{doc_id}:{start}:{end}"`` as node id.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import warnings
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

from llama_index.core.base.base_retriever import BaseRetriever
from llama_index.core.callbacks import CallbackManager
from llama_index.core.schema import (
    BaseNode,
    MetadataMode,
    NodeRelationship,
    NodeWithScore,
    QueryBundle,
    RelatedNodeInfo,
    TextNode,
)
from llama_index.core.vector_stores import MetadataFilters
from s3_retriever import Hit, S3Retriever
from s3_retriever.files.atomic import write_json_atomic
from s3_retriever.protocols import SupportsRetrieve, check_retriever, check_writable

from llama_index.retrievers.s3.filters import to_core_filters

Mode = Literal["hybrid", "s3", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "s3", "bm25")

INDEX_DIR = "s3_index"
"""Sub-folder of a persist dir that holds the core index."""
SETTINGS_FILE = "s3_retriever_settings.json"
"""File of a persist dir that holds this retriever's settings."""

RESERVED_KEY = "s3"
"""Node metadata key that holds this retriever's fields; refused in indexed metadata."""


def hit_to_node(hit: Hit) -> NodeWithScore:
    """Translate one core :class:`~s3_retriever.Hit` into a scored ``TextNode``.

    The node's metadata is the document's metadata plus, under the one key ``"s3"``, the span
    id, the ranking score, the component scores (``scores``) and the normalised ``relevance`` in
    [0, 1] (``s3_retriever/search/relevance.py``); that key is excluded from the
    text LLMs and embedders see. The document's own metadata is never overwritten.
    """
    metadata: dict[str, Any] = dict(hit.metadata)
    if RESERVED_KEY in metadata:
        warnings.warn(
            f"document {hit.doc_id!r} has its own metadata key {RESERVED_KEY!r}; the span's "
            f"scores are left out of its node",
            UserWarning,
            stacklevel=2,
        )
    else:
        metadata[RESERVED_KEY] = {
            "span_id": hit.id,
            "score": hit.score,
            "scores": dict(hit.scores),
            "relevance": hit.relevance,
        }
    node = TextNode(
        id_=hit.id,
        text=hit.text,
        start_char_idx=hit.start_char,
        end_char_idx=hit.end_char,
        metadata=metadata,
        excluded_embed_metadata_keys=[RESERVED_KEY],
        excluded_llm_metadata_keys=[RESERVED_KEY],
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},
    )
    return NodeWithScore(node=node, score=hit.score)


def link_neighbours(results: Sequence[NodeWithScore]) -> None:
    """Set ``PREVIOUS`` / ``NEXT`` between the returned spans of each document, in text order."""
    by_doc: dict[str, list[BaseNode]] = {}
    for result in results:
        by_doc.setdefault(result.node.ref_doc_id or "", []).append(result.node)
    for nodes in by_doc.values():
        nodes.sort(key=lambda node: node.start_char_idx or 0)
        for before, after in itertools.pairwise(nodes):
            before.relationships[NodeRelationship.NEXT] = RelatedNodeInfo(node_id=after.node_id)
            after.relationships[NodeRelationship.PREVIOUS] = RelatedNodeInfo(node_id=before.node_id)


class S3AttentionRetriever(BaseRetriever):
    """Evidence spans from long documents, ranked by a language model's own attention.

    Results are ordered best score first. Metadata filters are applied by the core before
    ranking, so ``similarity_top_k`` spans come from the documents that pass them.

    Args:
        retriever: the core retriever that answers: an :class:`s3_retriever.S3Retriever`, a
            ``ShardedRetriever`` or a ``RemoteRetriever`` (any
            :class:`s3_retriever.protocols.SupportsRetrieve`). Inserting and deleting documents
            needs one that holds the index (the first two); :meth:`persist` needs an
            ``S3Retriever``.
        similarity_top_k: maximum number of spans per query.
        token_budget: total model tokens of the returned spans.
        mode: ``hybrid`` (attention + BM25), ``s3`` (attention only) or ``bm25``.
        filters: metadata filters: every standard ``FilterOperator`` and the ``AND``, ``OR``
            and ``NOT`` conditions, nested too (see :mod:`llama_index.retrievers.s3.filters`).
        callback_manager: LlamaIndex callback manager.
        verbose: print progress of recursive retrieval.
    """

    def __init__(
        self,
        retriever: SupportsRetrieve,
        similarity_top_k: int = 4,
        token_budget: int = 1024,
        mode: Mode = "hybrid",
        filters: MetadataFilters | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        self.retriever = check_retriever(retriever)
        self.similarity_top_k = similarity_top_k
        self.token_budget = token_budget
        self.mode = mode
        self.filters = filters
        self._search_kwargs()  # validate the settings now rather than at the first query
        super().__init__(callback_manager=callback_manager, verbose=verbose)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_documents(
        cls,
        documents: Sequence[BaseNode],
        *,
        retriever: SupportsRetrieve | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> S3AttentionRetriever:
        """Index LlamaIndex ``Document``s (or ``TextNode``s) and return a retriever over them.

        Args:
            documents: whole documents; S3 picks spans itself, so there is no need to chunk.
            retriever: an existing core retriever to add to (an ``S3Retriever`` or a
                ``ShardedRetriever``); by default a new ``S3Retriever.from_pretrained()`` (the
                bundled model and its SAEs).
            retriever_kwargs: keyword arguments for ``S3Retriever.from_pretrained`` (for
                example ``model_path``, ``sae_path``, ``device``) when no ``retriever`` is given.
            **kwargs: the other constructor arguments (``similarity_top_k``, ``filters``, ...).
        """
        if retriever is None:
            retriever = S3Retriever.from_pretrained(**dict(retriever_kwargs or {}))
        elif retriever_kwargs:
            raise ValueError("pass either retriever or retriever_kwargs, not both")
        instance = cls(retriever, **kwargs)
        instance.add_documents(documents)
        return instance

    def add_documents(self, documents: Sequence[BaseNode], *, replace: bool = False) -> list[str]:
        """Index ``Document``s or ``TextNode``s; returns the document ids used.

        A node's document id is its ``ref_doc_id`` when it has a ``SOURCE`` relationship, else
        its ``id_``. Its metadata is kept (it must be JSON-serialisable and may not use the key
        ``"s3"``, which results use for scores). With ``replace=True`` documents whose ids are
        already indexed are replaced (an upsert); otherwise such ids are refused. A retriever
        that only searches (a ``RemoteRetriever``) refuses with a TypeError.
        """
        core = check_writable(self.retriever)
        nodes = list(documents)
        ids = [node.ref_doc_id or node.id_ for node in nodes]
        seen: dict[str, int] = {}
        for position, (doc_id, node) in enumerate(zip(ids, nodes, strict=True)):
            if doc_id in seen:
                raise ValueError(
                    f"nodes {seen[doc_id]} and {position} both map to document id {doc_id!r}. "
                    f"S3 indexes whole documents and finds spans itself: pass the source "
                    f"Documents instead of chunks of them."
                )
            if RESERVED_KEY in node.metadata:
                raise ValueError(
                    f"document {doc_id!r} uses the metadata key {RESERVED_KEY!r}, which results "
                    f"use for the span's scores; rename that key"
                )
            seen[doc_id] = position
        texts = [node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes]
        metadatas = [dict(node.metadata) for node in nodes]
        return core.add_documents(texts, ids=ids, metadatas=metadatas, replace=replace)

    insert_nodes = add_documents

    def insert(self, document: BaseNode) -> str:
        """Index one ``Document`` (``BaseIndex.insert``); returns its document id."""
        return self.add_documents([document])[0]

    def delete_ref_doc(self, ref_doc_id: str, **delete_kwargs: Any) -> bool:
        """Remove a document and all its spans; returns whether it was indexed.

        ``delete_kwargs`` (``BaseIndex``'s ``delete_from_docstore``) are accepted and ignored:
        the index keeps no separate docstore.
        """
        return check_writable(self.retriever).delete([ref_doc_id]) > 0

    def update_ref_doc(self, document: BaseNode, **update_kwargs: Any) -> None:
        """Replace the indexed document with ``document``'s id by ``document`` (added if new)."""
        self.add_documents([document], replace=True)

    # ------------------------------------------------------------------ persistence
    def persist(self, persist_dir: str | os.PathLike[str]) -> None:
        """Save the index (``s3_index/``) and these settings (a JSON file) under ``persist_dir``."""
        if not isinstance(self.retriever, S3Retriever):
            raise TypeError(
                f"persist saves an S3Retriever's index; this retriever is a "
                f"{type(self.retriever).__name__} (save a ShardedRetriever with its own save(), "
                f"a served index where it is served)"
            )
        root = Path(persist_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.retriever.save(root / INDEX_DIR)
        settings = {
            "similarity_top_k": self.similarity_top_k,
            "token_budget": self.token_budget,
            "mode": self.mode,
            "filters": None if self.filters is None else self.filters.model_dump(mode="json"),
        }
        write_json_atomic(root / SETTINGS_FILE, settings)

    @classmethod
    def from_persist_dir(
        cls,
        persist_dir: str | os.PathLike[str],
        *,
        model_path: str | os.PathLike[str] | None = None,
        device: str = "cpu",
        **kwargs: Any,
    ) -> S3AttentionRetriever:
        """Load a retriever written by :meth:`persist` (or a plain ``S3Retriever.save`` folder).

        Args:
            persist_dir: the folder given to :meth:`persist`.
            model_path: the model folder, for an index not built with the bundled model.
            device: torch device for question encoding.
            **kwargs: constructor arguments that override the saved settings.
        """
        root = Path(persist_dir)
        settings: dict[str, Any] = {}
        if (root / SETTINGS_FILE).is_file():
            settings = json.loads((root / SETTINGS_FILE).read_text())
            if settings.get("filters") is not None:
                settings["filters"] = MetadataFilters.model_validate(settings["filters"])
        index_dir = root if (root / "manifest.json").is_file() else root / INDEX_DIR
        if not index_dir.is_dir():
            raise FileNotFoundError(
                f"{root} holds no saved retriever: write one with "
                f"S3AttentionRetriever.persist({str(root)!r}) (or S3Retriever.save) first"
            )
        core = S3Retriever.load(index_dir, model_path=model_path, device=device)
        return cls(core, **{**settings, **kwargs})

    # ------------------------------------------------------------------ retrieval
    def _search_kwargs(self) -> dict[str, Any]:
        """Core ``retrieve`` arguments from the current settings."""
        k = self.similarity_top_k
        if isinstance(k, bool) or not isinstance(k, int) or k < 1:
            raise ValueError(f"similarity_top_k must be a positive int, got {k!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {', '.join(MODES)}; got {self.mode!r}")
        if self.token_budget < 1:
            raise ValueError(f"token_budget must be at least 1, got {self.token_budget}")
        return {
            "top_k": k,
            "token_budget": self.token_budget,
            "mode": self.mode,
            "filters": to_core_filters(self.filters),
            "order": "score",  # best first; ties keep document order
        }

    @staticmethod
    def _to_nodes(hits: Sequence[Hit]) -> list[NodeWithScore]:
        """Nodes in the core's best-first order, neighbours linked."""
        results = [hit_to_node(hit) for hit in hits]
        link_neighbours(results)
        return results

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Spans for ``query_bundle.query_str``."""
        hits = self.retriever.retrieve(query_bundle.query_str, **self._search_kwargs())
        return self._to_nodes(hits)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Like :meth:`_retrieve`, with the blocking model work in a worker thread."""
        search = self._search_kwargs()
        hits = await asyncio.to_thread(self.retriever.retrieve, query_bundle.query_str, **search)
        return self._to_nodes(hits)
