"""The document store: texts, ids, metadata, units and the token table, as flat arrays.

Every indexed token has a global position. Positions of one document are contiguous, documents
follow each other in insertion order, and deleting a document compacts positions, so all
position-keyed arrays (postings, stored keys) are remapped with one vectorised pass.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.errors import IndexLoadError
from s3_retriever.files.untrusted import UntrustedFileError, documents_fit, read_json_file
from s3_retriever.index.arrays import typed, write_npy

_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")

TABLES = ("doc_token_start", "doc_token_count", "unit_doc", "unit_chars", "unit_tokens")
"""The corpus's arrays, saved as ``corpus/{name}.npy``."""


@dataclass
class Corpus:
    """Documents with their units and token spans, addressable by global token position."""

    doc_ids: list[str] = field(default_factory=list)
    texts: list[str] = field(default_factory=list)
    metadatas: list[dict[str, Any]] = field(default_factory=list)
    doc_token_start: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """First global position of each document."""
    doc_token_count: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    unit_doc: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Row of the document each unit belongs to."""
    unit_chars: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    """[start, end) character offsets of each unit in its document."""
    unit_tokens: np.ndarray = field(default_factory=lambda: np.zeros((0, 2), np.int64))
    """[first, last + 1) global token positions of each unit (empty when no token ends in it)."""
    _breaks: np.ndarray | None = field(default=None, repr=False, compare=False)
    """:meth:`paragraph_breaks` of the first units, kept across appends (a commit adds units
    after them); deletions filter it, a load drops it."""
    _derived: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)
    """Per-unit tables a search reads (token counts, non-empty units, regions), built on
    first use and dropped by any change to the units."""

    def __len__(self) -> int:
        return len(self.doc_ids)

    @property
    def n_positions(self) -> int:
        return int(self.doc_token_count.sum())

    @property
    def n_units(self) -> int:
        return int(self.unit_doc.shape[0])

    def row_of(self) -> dict[str, int]:
        return {doc_id: row for row, doc_id in enumerate(self.doc_ids)}

    def append(
        self,
        doc_id: str,
        text: str,
        metadata: dict[str, Any],
        token_ends: np.ndarray,
        units: np.ndarray,
    ) -> None:
        """Add one document whose tokens end at ``token_ends`` and whose units are ``units``."""
        row = len(self.doc_ids)
        first = self.n_positions
        self._derived = {}
        self.doc_ids.append(doc_id)
        self.texts.append(text)
        self.metadatas.append(metadata)
        self.doc_token_start = np.append(self.doc_token_start, first)
        self.doc_token_count = np.append(self.doc_token_count, len(token_ends))
        # A token belongs to the unit holding its last character: a leading space is part of
        # the word it precedes, and whitespace-only tokens fall to the unit before them.
        last_char = np.maximum(token_ends - 1, 0)
        owner = np.searchsorted(units[:, 0], last_char, side="right") - 1
        owner = np.clip(owner, 0, max(len(units) - 1, 0))
        lo = np.searchsorted(owner, np.arange(len(units)), side="left")
        hi = np.searchsorted(owner, np.arange(len(units)), side="right")
        self.unit_doc = np.concatenate([self.unit_doc, np.full(len(units), row, np.int64)])
        self.unit_chars = np.concatenate([self.unit_chars, units.reshape(-1, 2)])
        self.unit_tokens = np.concatenate(
            [self.unit_tokens, np.stack([lo + first, hi + first], axis=1).reshape(-1, 2)]
        )

    def delete_rows(self, rows: set[int]) -> np.ndarray:
        """Drop documents; returns the boolean keep-mask over old global positions."""
        keep_pos = np.ones(self.n_positions, dtype=bool)
        for row in rows:
            start = int(self.doc_token_start[row])
            keep_pos[start : start + int(self.doc_token_count[row])] = False
        keep_rows = np.array([r not in rows for r in range(len(self.doc_ids))], dtype=bool)
        new_row = np.cumsum(keep_rows) - 1
        keep_units = keep_rows[self.unit_doc] if self.n_units else np.zeros(0, bool)
        # Documents go whole, so a kept unit keeps the unit before it (or starts its document).
        if self._breaks is not None:
            self._breaks = self._breaks[keep_units[: len(self._breaks)]]
        self._derived = {}
        old_starts = self.doc_token_start[keep_rows]
        self.doc_ids = [d for r, d in enumerate(self.doc_ids) if keep_rows[r]]
        self.texts = [t for r, t in enumerate(self.texts) if keep_rows[r]]
        self.metadatas = [m for r, m in enumerate(self.metadatas) if keep_rows[r]]
        self.doc_token_count = self.doc_token_count[keep_rows]
        self.doc_token_start = np.concatenate([[0], np.cumsum(self.doc_token_count)[:-1]]).astype(
            np.int64
        )[: len(self.doc_ids)]
        # A kept document's positions all move down by the same amount.
        shift = old_starts - self.doc_token_start
        kept_unit_rows = new_row[self.unit_doc[keep_units]]
        self.unit_tokens = self.unit_tokens[keep_units] - shift[kept_unit_rows][:, None]
        self.unit_doc = kept_unit_rows.astype(np.int64)
        self.unit_chars = self.unit_chars[keep_units]
        return keep_pos

    def position_doc_bounds(self) -> tuple[np.ndarray, np.ndarray]:
        """For every position: the first and one-past-last position of its document."""
        starts = np.repeat(self.doc_token_start, self.doc_token_count)
        return starts, starts + np.repeat(self.doc_token_count, self.doc_token_count)

    def unit_text(self, unit: int) -> str:
        start, end = self.unit_chars[unit]
        return self.texts[int(self.unit_doc[unit])][start:end]

    def unit_token_counts(self) -> np.ndarray:
        """Tokens of every unit (a shared array: do not change it)."""
        return self._cached(
            "counts", lambda: (self.unit_tokens[:, 1] - self.unit_tokens[:, 0]).astype(np.int64)
        )

    def nonempty_units(self) -> tuple[np.ndarray, np.ndarray]:
        """(ids of the units that own tokens, their first positions), both ascending."""

        def build() -> tuple[np.ndarray, np.ndarray]:
            ids = np.flatnonzero(self.unit_tokens[:, 1] > self.unit_tokens[:, 0])
            return ids, np.ascontiguousarray(self.unit_tokens[ids, 0])

        return self._cached("nonempty", build)

    def _cached(self, key: Any, build: Any) -> Any:
        found = self._derived.get(key)
        if found is None:
            found = build()
            self._derived[key] = found
        return found

    def paragraph_breaks(self) -> np.ndarray:
        """For every unit: whether a blank line separates it from the unit before it in its
        document (False for a document's first unit). Computed once per unit: a commit pays
        for its own units only."""
        done = self._breaks if self._breaks is not None else np.zeros(0, bool)
        first = len(done)
        if first < self.n_units:
            # The unit before the first new one (if any) closes the first gap.
            lo = max(first - 1, 0)
            docs = self.unit_doc[lo:].tolist()
            ends = self.unit_chars[lo:, 1].tolist()
            starts = self.unit_chars[lo:, 0].tolist()
            texts = self.texts
            fresh = [False] * (self.n_units - first)
            for i in range(first - lo, len(docs)):
                doc = docs[i]
                if i > 0 and docs[i - 1] == doc:
                    gap = texts[doc][ends[i - 1] : starts[i]]
                    fresh[i - (first - lo)] = _BLANK_LINE.search(gap) is not None
            done = np.concatenate([done, np.asarray(fresh, bool)])
            self._breaks = done
        return done

    def unit_regions(self, within_paragraph: bool) -> tuple[np.ndarray, np.ndarray]:
        """(region of every unit, tokens of every region): the runs of units a span may grow
        over, one document each, cut at blank lines when ``within_paragraph``."""

        def build() -> tuple[np.ndarray, np.ndarray]:
            starts = np.ones(self.n_units, bool)
            starts[1:] = self.unit_doc[1:] != self.unit_doc[:-1]
            if within_paragraph:
                starts |= self.paragraph_breaks()
            region = np.cumsum(starts) - 1
            tokens = np.bincount(region, self.unit_token_counts(), minlength=int(starts.sum()))
            return region, tokens.astype(np.int64)

        regions: tuple[np.ndarray, np.ndarray] = self._cached(("regions", within_paragraph), build)
        return regions

    def save(self, folder: Path) -> None:
        """Write ``documents.json`` (ids, texts, metadata) and ``corpus/*.npy`` into ``folder``."""
        documents = {"ids": self.doc_ids, "texts": self.texts, "metadatas": self.metadatas}
        (folder / "documents.json").write_text(json.dumps(documents, ensure_ascii=False))
        for name in TABLES:
            write_npy(folder / "corpus" / f"{name}.npy", getattr(self, name))

    @classmethod
    def read_documents(cls, folder: Path) -> Corpus:
        """Ids, texts and metadata from the ``documents.json`` :meth:`save` wrote (no tables)."""
        path = folder / "documents.json"
        if not path.is_file():
            raise IndexLoadError(f"{path} is missing; the index is damaged. Rebuild the index.")
        try:
            documents = read_json_file(path, max_bytes=path.stat().st_size)
        except UntrustedFileError as exc:
            raise IndexLoadError(f"{exc}; the index is damaged. Rebuild the index.") from exc
        if not documents_fit(documents):
            raise IndexLoadError(
                f"{path} does not hold unique string ids, string texts and dict metadata of equal "
                f"count; the index is damaged. Rebuild the index."
            )
        return cls(
            doc_ids=list(documents["ids"]),
            texts=list(documents["texts"]),
            metadatas=list(documents["metadatas"]),
        )

    def read_tables(
        self, arrays: Mapping[str, np.ndarray], folder: Path, n_documents: int, n_positions: int
    ) -> None:
        """Take the tables :meth:`save` wrote from ``arrays`` (by file name), checked for
        consistency and against the ``n_documents`` and ``n_positions`` of the manifest."""
        for name in TABLES:
            setattr(self, name, typed(arrays, f"corpus/{name}.npy", "i", "signed integers", folder))
        self._breaks, self._derived = None, {}
        if self.n_positions != n_positions or len(self) != n_documents:
            raise IndexLoadError(f"{folder}: document tables disagree with the manifest; rebuild.")
        problem = corpus_problem(self)
        if problem:
            raise IndexLoadError(f"{folder}: {problem}; the index is damaged. Rebuild the index.")


def check_metadata(metadata: Any, doc_id: str) -> dict[str, Any]:
    """Metadata must be a dict that survives a JSON round trip: it is saved as JSON, never pickled.

    Values JSON would silently change (int keys become strings, tuples lists) or that standard JSON
    cannot hold (NaN, infinity) are refused, so a saved and reloaded index returns the same
    metadata that was given.
    """
    if metadata is None:
        return {}
    if not isinstance(metadata, dict):
        raise TypeError(f"metadata for document {doc_id!r} must be a dict, got {type(metadata)}")
    hint = "use str keys and str, int, float, bool, None, list or dict values"
    try:
        encoded = json.dumps(metadata, allow_nan=False, ensure_ascii=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(
            f"metadata for document {doc_id!r} is not JSON-serialisable ({exc}); {hint}."
        ) from exc
    try:
        encoded.encode("utf-8")
    except UnicodeEncodeError as exc:
        # json.dumps escapes it, but documents.json is written as UTF-8 text, so every later
        # save of the index would fail.
        raise ValueError(
            f"metadata for document {doc_id!r} holds an unpaired surrogate (invalid UTF-8 in "
            f"its source, at {encoded[max(exc.start - 20, 0) : exc.start]!r}); decode the source "
            f"with errors='replace' or fix its encoding first."
        ) from None
    copy: dict[str, Any] = json.loads(encoded)
    if copy != metadata:
        raise TypeError(
            f"metadata for document {doc_id!r} would change when saved as JSON (non-str keys or "
            f"tuples); {hint}."
        )
    # The round trip is a deep copy: the caller changing its dict later leaves the index alone.
    return copy


def corpus_problem(corpus: Corpus) -> str | None:
    """What is inconsistent in a loaded corpus's tables, or None: offsets must stay in range."""
    n_docs, n_units = len(corpus), corpus.n_units
    counts, starts = corpus.doc_token_count, corpus.doc_token_start
    if counts.shape != (n_docs,) or starts.shape != (n_docs,) or (counts < 0).any():
        return "document token tables do not match the document list"
    if not np.array_equal(starts, np.concatenate([[0], np.cumsum(counts)[:-1]])[:n_docs]):
        return "document token starts are not contiguous"
    if corpus.unit_chars.shape != (n_units, 2) or corpus.unit_tokens.shape != (n_units, 2):
        return "unit tables have the wrong shape"
    if n_units == 0:
        return None
    if corpus.unit_doc.min() < 0 or corpus.unit_doc.max() >= n_docs:
        return "units point to documents that do not exist"
    if (np.diff(corpus.unit_doc) < 0).any():
        return "units are not in document order"
    lengths = np.array([len(t) for t in corpus.texts], dtype=np.int64)[corpus.unit_doc]
    chars, tokens = corpus.unit_chars, corpus.unit_tokens
    if (
        (chars[:, 0] < 0).any()
        or (chars[:, 0] > chars[:, 1]).any()
        or (chars[:, 1] > lengths).any()
    ):
        return "unit character offsets fall outside their documents"
    doc_first = starts[corpus.unit_doc]
    doc_end = doc_first + counts[corpus.unit_doc]
    if (
        (tokens[:, 0] < doc_first).any()
        or (tokens[:, 1] > doc_end).any()
        or (tokens[:, 0] > tokens[:, 1]).any()
    ):
        return "unit token ranges fall outside their documents"
    return None
