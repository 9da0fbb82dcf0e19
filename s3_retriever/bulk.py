"""Corpus-scale indexing: many documents, read lazily, committed in batches, resumable.

Documents come from text files, folders of them, or JSONL files (one ``{"text": ..., "id": ...,
"metadata": {...}}`` object a line). They are scanned ``commit_every`` at a time and the index is
saved (atomically) after every batch, so a run that is killed loses at most one batch: run the
same command with ``resume=True`` and documents whose ids are already in the index are skipped.

Memory holds the index itself plus one batch of documents, never the whole input.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3_retriever.console import Progress, progress_bar
from s3_retriever.errors import S3RetrieverError

if TYPE_CHECKING:
    from s3_retriever.retriever import S3Retriever

JSONL_SUFFIXES = (".jsonl", ".ndjson")


class SourceError(S3RetrieverError, ValueError):
    """An input that cannot be read as documents; the message says which and how to fix it."""


@dataclass(frozen=True)
class SourceDocument:
    """One document to index, with the id that makes a rerun skip it."""

    doc_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def read_text(path: Path) -> str:
    """A UTF-8 text file's contents, or a :class:`SourceError` that says how to convert it."""
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise SourceError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise SourceError(
            f"{path} is not valid UTF-8 (byte {exc.start}); convert it first, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > {path}.utf8`"
        ) from exc


def _jsonl_documents(path: Path) -> Iterator[SourceDocument]:
    with open(path, encoding="utf-8") as handle:
        for line_no, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            where = f"{path}:{line_no}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as exc:
                raise SourceError(f"{where} is not valid JSON ({exc.msg})") from exc
            if not isinstance(record, dict) or not isinstance(record.get("text"), str):
                raise SourceError(
                    f'{where}: each line must be an object with a "text" string '
                    '(and optional "id" and "metadata")'
                )
            metadata = record.get("metadata") or {}
            if not isinstance(metadata, dict):
                raise SourceError(f'{where}: "metadata" must be an object')
            doc_id = str(record["id"]) if record.get("id") is not None else where
            yield SourceDocument(doc_id, record["text"], {"source": str(path), **metadata})


class SkippedLinkWarning(UserWarning):
    """A symbolic link inside an input folder leads outside it and was not followed."""


def _files(paths: Sequence[Path], follow_links: bool = False) -> list[Path]:
    files: list[Path] = []
    for path in paths:
        if path.is_dir():
            files.extend(_folder_files(path, follow_links))
        elif path.is_file():
            files.append(path)
        else:
            raise SourceError(f"{path} does not exist")
    return files


def _folder_files(folder: Path, follow_links: bool) -> list[Path]:
    """Files below ``folder``, in sorted order. A link is followed only when it stays inside the
    folder (or ``follow_links``): a link to ``/proc/self/environ`` or ``~/.ssh`` would otherwise
    put secrets into the index, and from there into answers."""
    root = folder.resolve()
    found: list[Path] = []
    seen: set[Path] = set()

    def walk(here: Path) -> None:
        for entry in sorted(here.iterdir()):
            if entry.is_symlink():
                target = entry.resolve()
                if not (follow_links or _inside(root, target)):
                    warnings.warn(
                        f"skipped {entry}: a link to {target}, outside {folder} (pass "
                        f"--follow-links to index what links point to)",
                        SkippedLinkWarning,
                        stacklevel=2,
                    )
                    continue
                if target.is_dir():
                    if follow_links and target not in seen and not _inside(root, target):
                        seen.add(target)  # an outside folder, once (links may form cycles)
                        walk(entry)
                    continue  # a folder inside is walked where it really is
            if entry.is_dir():
                walk(entry)
            elif entry.is_file():
                found.append(entry)

    walk(folder)
    return found


def _inside(root: Path, target: Path) -> bool:
    return target == root or root in target.parents


def _holds_no_text(path: Path) -> bool:
    """An empty or whitespace-only file (a JSONL file: no non-blank line)."""
    with open(path, "rb") as handle:
        return all(not chunk.strip() for chunk in iter(lambda: handle.read(1 << 16), b""))


def empty_inputs(paths: Sequence[str | Path], follow_links: bool = False) -> list[Path]:
    """The input files that hold no text; :func:`iter_documents` skips them."""
    return [p for p in _files([Path(p) for p in paths], follow_links) if _holds_no_text(p)]


def iter_documents(
    paths: Sequence[str | Path], follow_links: bool = False
) -> Iterator[SourceDocument]:
    """Documents of text files, folders (every file below, in sorted order) and JSONL files.

    A text file is one document whose id is its path; a JSONL line's id is its ``id`` field, or
    ``path:line`` without one. Files are read one at a time; those holding no text (see
    :func:`empty_inputs`) are skipped. Links inside a folder that lead out of it are skipped
    with a :class:`SkippedLinkWarning` unless ``follow_links``.
    """
    for path in _files([Path(p) for p in paths], follow_links):
        if path.suffix.lower() in JSONL_SUFFIXES:
            yield from _jsonl_documents(path)
        elif not _holds_no_text(path):
            yield SourceDocument(str(path), read_text(path), {"source": str(path)})


def count_documents(paths: Sequence[str | Path], follow_links: bool = False) -> int:
    """How many documents :func:`iter_documents` yields, counted without decoding texts."""
    total = 0
    for path in _files([Path(p) for p in paths], follow_links):
        if path.suffix.lower() in JSONL_SUFFIXES:
            with open(path, "rb") as handle:
                total += sum(1 for line in handle if line.strip())
        elif not _holds_no_text(path):
            total += 1
    return total


@dataclass
class BulkReport:
    """What one :func:`index_corpus` run did."""

    added: int = 0
    """Documents scanned and committed by this run."""
    skipped: int = 0
    """Documents already in the index (a resumed run)."""
    commits: int = 0
    """Saves of the index."""
    tokens: int = 0
    """Model tokens scanned by this run."""


def index_corpus(
    retriever: S3Retriever,
    documents: Iterator[SourceDocument],
    out: str | Path,
    commit_every: int = 200,
    total: int | None = None,
    progress: Progress = None,
    on_commit: Callable[[BulkReport], None] | None = None,
) -> BulkReport:
    """Add ``documents`` to ``retriever`` in batches, saving to ``out`` after each batch.

    Documents whose ids the index already holds are skipped, which is what makes a rerun of an
    interrupted command resume where it stopped. ``total`` (documents, for the progress bar) may
    be given when known. ``progress`` is the switch of :mod:`s3_retriever.console` (default: a
    bar only on a terminal). ``on_commit`` is called after every save.
    """
    if commit_every < 1:
        raise ValueError(f"commit_every must be at least 1, got {commit_every}")
    report = BulkReport()
    done = set(retriever.doc_ids)
    bar = progress_bar(total, "indexing", "doc", progress, smoothing=0.1)
    batch: list[SourceDocument] = []

    def commit() -> None:
        before = retriever.index.n_positions
        # One bar for the whole corpus; per-batch scan bars would stack below it.
        retriever.add_documents(
            [d.text for d in batch],
            ids=[d.doc_id for d in batch],
            metadatas=[d.metadata for d in batch],
            progress=False,  # one bar for the whole corpus; per-batch scan bars would stack
        )
        retriever.save(out)
        report.added += len(batch)
        report.tokens += retriever.index.n_positions - before
        report.commits += 1
        if bar is not None:
            bar.update(len(batch))
            bar.set_postfix(tokens=retriever.index.n_positions, refresh=False)
        batch.clear()
        if on_commit is not None:
            on_commit(report)

    try:
        for doc in documents:
            if doc.doc_id in done:
                report.skipped += 1
                if bar is not None:
                    bar.update(1)
                continue
            done.add(doc.doc_id)
            batch.append(doc)
            if len(batch) >= commit_every:
                commit()
        if batch:
            commit()
    finally:
        if bar is not None:
            bar.close()
    return report
