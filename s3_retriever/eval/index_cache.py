"""Saved engine indexes for evaluation runs, so an ablation of query-time settings scans once.

A corpus task scans hundreds of thousands of tokens before its first question; a study of
scoring settings asks the same index many times over several runs. With ``--index-cache DIR``
each built index is saved under a key of everything that shaped it (the index-time settings,
the model's fingerprint, the SAE bundle, the documents) and loaded by the next run. Loading goes
through :meth:`S3Retriever.load`, which refuses an index of another model or SAE bundle; such
an entry is rebuilt, never trusted.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3_retriever.config import RetrieverConfig
from s3_retriever.errors import IndexLoadError
from s3_retriever.retriever import S3Retriever


def cache_key(
    template: S3Retriever,
    index_settings: str,
    documents: Sequence[str],
    doc_ids: Sequence[str],
    metadatas: Sequence[dict[str, Any]] | None,
) -> str:
    """A hex digest of what an engine index depends on (query-time settings excluded)."""
    digest = hashlib.sha256()
    for part in (
        index_settings,
        template.model.fingerprint,
        template.model.tokenizer_fingerprint,
        json.dumps(sorted(template.bundle.saes), default=str),
        json.dumps([list(h) for h in template.heads]),
    ):
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    for doc_id, text in zip(doc_ids, documents, strict=True):
        digest.update(doc_id.encode("utf-8", "surrogatepass") + b"\0")
        digest.update(text.encode("utf-8", "surrogatepass") + b"\0")
    digest.update(json.dumps(list(metadatas or []), sort_keys=True, default=str).encode("utf-8"))
    return digest.hexdigest()[:32]


def cached_retriever(
    cache: Path,
    key: str,
    template: S3Retriever,
    config: RetrieverConfig,
    documents: Sequence[str],
    doc_ids: Sequence[str],
    metadatas: Sequence[dict[str, Any]] | None,
) -> S3Retriever:
    """The retriever saved under ``cache/key``, or a new one indexed now and saved there."""
    folder = cache / key
    if folder.is_dir():
        try:
            stored = S3Retriever.load(folder, loaded=template.model)
        except IndexLoadError:
            stored = None  # another model or SAE bundle wrote it: rebuilt and saved over below
        # Query-time settings go with every call (EngineIndex.retrieve), so the saved config,
        # equal to ``config`` in every index-time section by the key, serves as it is.
        if stored is not None and len(stored) == len(doc_ids):
            return stored
    retriever = S3Retriever(template.model, template.bundle, config)
    retriever.add_documents(list(documents), ids=list(doc_ids), metadatas=metadatas)
    cache.mkdir(parents=True, exist_ok=True)
    retriever.save(folder)
    return retriever
