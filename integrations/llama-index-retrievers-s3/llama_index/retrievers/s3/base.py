"""LlamaIndex retriever over :class:`s3_retriever.S3Retriever`.

Every result is one evidence span: a ``TextNode`` whose text is exactly
``source[start_char_idx:end_char_idx]`` of the indexed document named by its ``SOURCE``
relationship, with the span id ``"{doc_id}:{start}:{end}"`` as node id.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
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
from llama_index.core.vector_stores import (
    FilterCondition,
    FilterOperator,
    MetadataFilter,
    MetadataFilters,
)
from s3_retriever import Hit, S3Retriever

Mode = Literal["hybrid", "s3", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "s3", "bm25")

INDEX_DIR = "s3_index"
"""Sub-folder of a persist dir that holds the core index."""
SETTINGS_FILE = "s3_retriever_settings.json"
"""File of a persist dir that holds this retriever's settings."""

_SUPPORTED_OPERATORS = (FilterOperator.EQ, FilterOperator.IN)


def to_core_filters(filters: MetadataFilters | None) -> dict[str, list[Any]] | None:
    """Translate LlamaIndex metadata filters into the core's ``{key: [allowed values]}`` form.

    Supported: ``MetadataFilter``/``ExactMatchFilter`` with the ``EQ`` or ``IN`` operator,
    combined with ``AND`` (nested ``AND`` groups too). The key ``doc_id`` matches document ids.
    A key given twice keeps only the values both allow.

    Raises:
        NotImplementedError: for any other operator or condition.
    """
    if filters is None or not filters.filters:
        return None
    allowed: dict[str, list[Any]] = {}
    _collect(filters, allowed)
    return allowed


def _collect(filters: MetadataFilters, allowed: dict[str, list[Any]]) -> None:
    condition = filters.condition or FilterCondition.AND
    if condition != FilterCondition.AND:
        raise NotImplementedError(
            f"S3AttentionRetriever supports only the AND filter condition, got "
            f"{condition.value!r}; combine filters with AND or use FilterOperator.IN for "
            f"alternatives of one key."
        )
    for item in filters.filters:
        if isinstance(item, MetadataFilters):
            _collect(item, allowed)
            continue
        values = _allowed_values(item)
        if item.key in allowed:
            values = [v for v in allowed[item.key] if v in values]
        allowed[item.key] = values


def _allowed_values(item: MetadataFilter) -> list[Any]:
    operator = item.operator
    if operator not in _SUPPORTED_OPERATORS:
        supported = ", ".join(op.name for op in _SUPPORTED_OPERATORS)
        raise NotImplementedError(
            f"S3AttentionRetriever cannot apply the {operator.name} ({operator.value!r}) "
            f"operator on {item.key!r}; supported operators: {supported}."
        )
    if operator == FilterOperator.EQ:
        if isinstance(item.value, list):
            raise NotImplementedError(
                f"EQ with a list value on {item.key!r} is not supported; use FilterOperator.IN "
                f"to match any of several values."
            )
        return [item.value]
    if not isinstance(item.value, list):
        raise ValueError(
            f"FilterOperator.IN on {item.key!r} needs a list value, got {item.value!r}"
        )
    return list(item.value)


def hit_to_node(hit: Hit) -> NodeWithScore:
    """Translate one core :class:`~s3_retriever.Hit` into a scored ``TextNode``."""
    node = TextNode(
        id_=hit.id,
        text=hit.text,
        start_char_idx=hit.start_char,
        end_char_idx=hit.end_char,
        metadata=dict(hit.metadata),
        relationships={NodeRelationship.SOURCE: RelatedNodeInfo(node_id=hit.doc_id)},
    )
    return NodeWithScore(node=node, score=hit.score)


class S3AttentionRetriever(BaseRetriever):
    """Evidence spans from long documents, ranked by a language model's own attention.

    Results are ordered best score first. Metadata filters are applied by the core before
    ranking, so ``similarity_top_k`` spans come from the documents that pass them.

    Args:
        retriever: the core :class:`s3_retriever.S3Retriever` holding the index and the model.
        similarity_top_k: maximum number of spans per query.
        token_budget: total model tokens of the returned spans.
        mode: ``hybrid`` (attention + BM25), ``s3`` (attention only) or ``bm25``.
        filters: metadata filters (EQ / IN operators, AND condition).
        callback_manager: LlamaIndex callback manager.
        verbose: print progress of recursive retrieval.
    """

    def __init__(
        self,
        retriever: S3Retriever,
        similarity_top_k: int = 4,
        token_budget: int = 1024,
        mode: Mode = "hybrid",
        filters: MetadataFilters | None = None,
        callback_manager: CallbackManager | None = None,
        verbose: bool = False,
    ) -> None:
        if not isinstance(retriever, S3Retriever):
            raise TypeError(f"retriever must be an s3_retriever.S3Retriever, got {type(retriever)}")
        self.retriever = retriever
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
        retriever: S3Retriever | None = None,
        retriever_kwargs: Mapping[str, Any] | None = None,
        **kwargs: Any,
    ) -> S3AttentionRetriever:
        """Index LlamaIndex ``Document``s (or ``TextNode``s) and return a retriever over them.

        Args:
            documents: whole documents; S3 picks spans itself, so there is no need to chunk.
            retriever: an existing core retriever to add to; by default a new one is built with
                ``S3Retriever.from_pretrained()`` (the bundled model and its SAEs).
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

    def add_documents(self, documents: Sequence[BaseNode]) -> list[str]:
        """Index ``Document``s or ``TextNode``s; returns the document ids used.

        A node's document id is its ``ref_doc_id`` when it has a ``SOURCE`` relationship, else
        its ``id_``. Its metadata is kept (it must be JSON-serialisable).
        """
        nodes = list(documents)
        ids = [node.ref_doc_id or node.id_ for node in nodes]
        seen: dict[str, int] = {}
        for position, doc_id in enumerate(ids):
            if doc_id in seen:
                raise ValueError(
                    f"nodes {seen[doc_id]} and {position} both map to document id {doc_id!r}. "
                    f"S3 indexes whole documents and finds spans itself: pass the source "
                    f"Documents instead of chunks of them."
                )
            seen[doc_id] = position
        texts = [node.get_content(metadata_mode=MetadataMode.NONE) for node in nodes]
        return self.retriever.add_documents(
            texts, ids=ids, metadatas=[dict(node.metadata) for node in nodes]
        )

    insert_nodes = add_documents

    # ------------------------------------------------------------------ persistence
    def persist(self, persist_dir: str | os.PathLike[str]) -> None:
        """Save the index (``s3_index/``) and these settings (a JSON file) under ``persist_dir``."""
        root = Path(persist_dir)
        root.mkdir(parents=True, exist_ok=True)
        self.retriever.save(root / INDEX_DIR)
        settings = {
            "similarity_top_k": self.similarity_top_k,
            "token_budget": self.token_budget,
            "mode": self.mode,
            "filters": None if self.filters is None else self.filters.model_dump(mode="json"),
        }
        handle, staging = tempfile.mkstemp(prefix=f".{SETTINGS_FILE}.", dir=root)
        with os.fdopen(handle, "w") as out:
            json.dump(settings, out, indent=1)
        os.replace(staging, root / SETTINGS_FILE)

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
        }

    @staticmethod
    def _to_nodes(hits: Sequence[Hit]) -> list[NodeWithScore]:
        """Nodes best score first; ties keep the core's document order."""
        return [hit_to_node(hit) for hit in sorted(hits, key=lambda hit: -hit.score)]

    def _retrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Spans for ``query_bundle.query_str``."""
        hits = self.retriever.retrieve(query_bundle.query_str, **self._search_kwargs())
        return self._to_nodes(hits)

    async def _aretrieve(self, query_bundle: QueryBundle) -> list[NodeWithScore]:
        """Like :meth:`_retrieve`, with the blocking model work in a worker thread."""
        search = self._search_kwargs()
        hits = await asyncio.to_thread(self.retriever.retrieve, query_bundle.query_str, **search)
        return self._to_nodes(hits)
