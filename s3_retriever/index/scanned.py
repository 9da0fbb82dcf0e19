"""Texts read by the model but not yet committed to an index.

A sharded build (:mod:`s3_retriever.distributed`) scans on workers and commits each document on
the shard that owns it; :class:`ScannedTexts` is what travels between the two.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from s3_retriever.console import Progress
from s3_retriever.index import staging
from s3_retriever.index.index import Index
from s3_retriever.index.key_encoding import KeyEncoder, NewCodes, NewKeys
from s3_retriever.index.postings import Field
from s3_retriever.index.staging import Staged
from s3_retriever.model.scan import Scanner, TokenizedText, tokenize_many


@dataclass(frozen=True)
class ScannedTexts:
    """Texts with their tokens, keys and codes (:meth:`S3Retriever.scan_texts`)."""

    texts: list[str]
    tokenized: list[TokenizedText]
    keys: NewKeys
    """Key field -> ``(positions, int8 keys)`` chunks; positions from the first text's start."""
    codes: NewCodes
    """Key field -> ``(positions, latent ids, activations)`` chunks, positioned like ``keys``."""


def scan_texts(
    scanner: Scanner,
    encoder: KeyEncoder,
    tokenizer: Any,
    fields: Sequence[Field],
    texts: Sequence[str],
    progress: Progress = None,
) -> ScannedTexts:
    """Tokenize, scan and code ``texts``; positions count from the first text's first token."""
    tokenized = tokenize_many(tokenizer, texts)
    new_keys: NewKeys = {f: [] for f in fields}
    new_codes: NewCodes = {f: [] for f in fields}
    batches = scanner.scan_batches(tokenized, progress=progress)
    encoder.run(batches, _doc_base(tokenized), new_keys, new_codes)
    return ScannedTexts(list(texts), tokenized, new_keys, new_codes)


def _doc_base(tokenized: Sequence[TokenizedText]) -> np.ndarray:
    """First position of each text, counted from the first text's first token."""
    return np.concatenate([[0], np.cumsum([len(t) for t in tokenized])[:-1]]).astype(np.int64)


@dataclass(frozen=True)
class StagedTexts:
    """Texts with their tokens, and their keys and codes staged in bounded memory
    (:mod:`s3_retriever.index.staging`) for one index's :meth:`~Index.commit_staged`."""

    texts: list[str]
    tokenized: list[TokenizedText]
    staged: Staged


def stage_texts(
    scanner: Scanner,
    encoder: KeyEncoder,
    tokenizer: Any,
    index: Index,
    texts: Sequence[str],
    progress: Progress = None,
) -> StagedTexts:
    """Tokenize, scan and code ``texts`` into stages of ``index``'s fields (read, not changed:
    the call needs no lock), at positions counted from the first text's first token."""
    tokenized = tokenize_many(tokenizer, texts)
    staged = index.stage(sum(len(t) for t in tokenized))
    batches = scanner.scan_batches(tokenized, progress=progress)
    encoder.run(batches, _doc_base(tokenized), staged.keys, staged.postings)
    return StagedTexts(list(texts), tokenized, staged)


def commit_scanned(
    index: Index, scanned: ScannedTexts, ids: Sequence[str], metadatas: Sequence[dict[str, Any]]
) -> None:
    """Commit scanned texts (ids and metadata already checked) after what ``index`` holds."""
    base = index.n_positions
    keys: NewKeys = {f: [(p + base, v) for p, v in c] for f, c in scanned.keys.items()}
    codes: NewCodes = {f: [(p + base, i, a) for p, i, a in c] for f, c in scanned.codes.items()}
    index.commit(scanned.texts, ids, metadatas, scanned.tokenized, keys, codes)


def read_texts(
    scanner: Scanner,
    encoder: KeyEncoder,
    tokenizer: Any,
    index: Index,
    fields: Sequence[Field],
    texts: Sequence[str],
    progress: Progress = None,
) -> ScannedTexts | StagedTexts:
    """What ``add_documents`` reads before it commits: calls past
    :data:`~s3_retriever.index.staging.STAGE_ABOVE_CHARS` are staged (bounded memory), smaller
    ones scanned plainly (their fields commit in parallel threads, faster on a GPU)."""
    if sum(len(t) for t in texts) > staging.STAGE_ABOVE_CHARS:
        return stage_texts(scanner, encoder, tokenizer, index, texts, progress)
    return scan_texts(scanner, encoder, tokenizer, fields, texts, progress)


def commit_read(
    index: Index,
    read: ScannedTexts | StagedTexts,
    ids: Sequence[str],
    metadatas: Sequence[dict[str, Any]],
) -> None:
    """Commit what :func:`read_texts` read (ids and metadata already checked)."""
    if isinstance(read, StagedTexts):
        index.commit_staged(read.texts, ids, metadatas, read.tokenized, read.staged)
    else:
        commit_scanned(index, read, ids, metadatas)
