"""SAE postings of one field, keyed by global token position: a compact CSR over latents.

S3 step 3: an inverted index feature id -> token positions with activations. The paper's prototype
used Python dicts and proposed contiguous integer arrays, delta coding and pruning of frequent
features. Here each field (layer, kv-head) is a CSR matrix over latents, stored compactly:

- positions: each latent's list is sorted, so it is kept as gaps, and every gap as a LEB128
  varint (7 bits a byte). With 2,048 latents and k active per token, gaps average 2048/k
  positions, so most take one or two bytes instead of four.
- activations: uint8 codes on one fixed logarithmic grid, 2**-8 to 2**8 in codes 1-255 (15.9
  a doubling), code 0 for zero. Each activation keeps its value within 2.2% relative. The grid
  depends on nothing in the data, so a code never changes once written: appends in any order,
  deletes and re-saves give byte-identical arrays, and errors never compound. TopK activations
  of the shipped SAEs span 0.09 to 13; docs/performance.md gives the measured effect on retrieval.

Decoded arrays (int32 positions, float32 activations) are built once on the first search and kept
until the postings change. New postings are buffered and merged on the next read.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from s3_retriever.errors import IndexLoadError
from s3_retriever.index.arrays import typed, write_npy
from s3_retriever.index.posting_codes import (
    _encode_varints_sized,
    _varint_sizes,
    decode_varints,
    dequantize_activations,
    encode_varints,
    quantize_activations,
)

__all__ = ["Field", "Postings", "decode_varints", "dequantize_activations", "encode_varints"]
__all__ += ["quantize_activations"]

Field = tuple[int, int]
"""(layer, kv_head): one stream of keys."""


def _list_ids(indptr: np.ndarray) -> np.ndarray:
    """The latent that owns each posting of a CSR ``indptr``."""
    return np.repeat(np.arange(len(indptr) - 1, dtype=np.int32), np.diff(indptr))


def sort_by_latent(
    ids: np.ndarray, positions: np.ndarray, codes: np.ndarray, n_latents: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """CSR ``indptr`` and the positions and codes of postings given in position order, sorted by
    latent (a stable sort, so each list stays in position order: a radix sort for 16-bit ids)."""
    order = np.argsort(
        ids.astype(np.int16 if n_latents <= 1 << 15 else np.int32, copy=False), kind="stable"
    )
    counts = np.bincount(ids, minlength=n_latents)
    indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    return indptr, positions[order], codes[order]


def _gaps(positions: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    """Per-list gaps; each list's first entry keeps its absolute position."""
    gaps = np.diff(positions.astype(np.int64), prepend=np.int64(0))
    heads = indptr[:-1][np.diff(indptr) > 0]
    gaps[heads] = positions[heads]
    return gaps


def _undo_gaps(gaps: np.ndarray, indptr: np.ndarray) -> np.ndarray:
    running = np.cumsum(gaps)
    lengths = np.diff(indptr)
    heads = indptr[:-1][lengths > 0]
    # Each list restarts: subtract what the running sum held just before its head.
    before = running[heads] - gaps[heads]
    return running - np.repeat(before, lengths[lengths > 0])


@dataclass
class Postings:
    """Compact CSR postings of one field: latent j owns postings ``indptr[j]:indptr[j + 1]``.

    ``position_bytes[byteptr[j]:byteptr[j + 1]]`` holds latent j's position gaps as varints and
    ``activation_codes[indptr[j]:indptr[j + 1]]`` the codes of its activations.
    ``exact_activations`` keeps float16 activations instead (the uncompressed reference, used to
    measure what the uint8 codes cost).
    """

    n_latents: int
    exact_activations: bool = False
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    byteptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    position_bytes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    activation_codes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.uint8))
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    _decoded: tuple[np.ndarray, np.ndarray] | None = None
    _by_position: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
    _last: np.ndarray | None = None

    def __post_init__(self) -> None:
        if self.indptr.shape[0] != self.n_latents + 1:
            self.indptr = np.zeros(self.n_latents + 1, np.int64)
            self.byteptr = np.zeros(self.n_latents + 1, np.int64)
            self.activation_codes = np.zeros(0, self._code_dtype)

    @property
    def _code_dtype(self) -> type[np.generic]:
        return np.float16 if self.exact_activations else np.uint8

    def append(self, positions: np.ndarray, ids: np.ndarray, acts: np.ndarray) -> None:
        """Buffer postings of ``len(positions)`` tokens, each with ``k`` (id, activation) pairs."""
        # Kept as given (int16 ids and float16 activations from the scan): the flush widens
        # them once, for all buffered chunks together.
        k = ids.shape[1]
        self._pending.append((np.repeat(positions.astype(np.int64, copy=False), k), ids, acts))

    def flush(self) -> None:
        """Merge buffered postings into the compact arrays.

        When every new position follows the indexed ones (documents are appended), each list is
        extended by splicing bytes: the old postings are copied, never decoded, so a commit costs
        memory and time in proportion to the compact index, not 8-24 bytes a posting.
        """
        if not self._pending:
            return
        new_pos = np.concatenate([p for p, _, _ in self._pending])
        new_ids = np.concatenate([i.reshape(-1) for _, i, _ in self._pending])
        new_act = np.concatenate([a.reshape(-1) for _, _, a in self._pending])
        self._pending = []
        if int(self.indptr[-1]) == 0:
            self._sort_and_store(new_ids, new_pos, new_act)
            return
        last = self._last_positions()
        if int(new_pos.min()) > int(last.max()):
            fresh = Postings(self.n_latents, exact_activations=self.exact_activations)
            fresh._sort_and_store(new_ids, new_pos, new_act)
            self._splice(fresh, last)
            return
        old_pos, old_act = self.decode()
        self._sort_and_store(
            np.concatenate([_list_ids(self.indptr), new_ids]),
            np.concatenate([old_pos.astype(np.int64), new_pos]),
            np.concatenate([old_act, new_act]),
        )

    def _sort_and_store(self, ids: np.ndarray, positions: np.ndarray, acts: np.ndarray) -> None:
        """Store postings given in any order, sorted by (latent, position).

        Sorted lists make results independent of the order documents arrived and gaps
        non-negative. A stable sort of position-ordered postings by latent (a radix sort for
        16-bit ids) does it. The postings of one call mostly arrive in position order already
        (one document, or documents whose chunks are all full), and then the sort by position
        is skipped: a stable sort of sorted keys is the identity.
        """
        # Codes are per posting, so coding before the sorts gives the same bytes, and the sorts
        # then move one byte a posting instead of four.
        codes = self._activation_codes(acts)
        if len(positions) > 1 and not bool(np.all(positions[1:] >= positions[:-1])):
            by_position = np.argsort(positions, kind="stable")
            ids, positions, codes = ids[by_position], positions[by_position], codes[by_position]
        self._store_coded(*sort_by_latent(ids, positions, codes, self.n_latents))

    def _last_positions(self) -> np.ndarray:
        """Last position of every list (-1 when empty), cached until the lists change."""
        if self._last is None:
            positions, _ = self.decode()
            last = np.full(self.n_latents, -1, np.int64)
            used = np.diff(self.indptr) > 0
            last[used] = positions[self.indptr[1:][used] - 1]
            self._last = last
        return self._last

    def _splice(self, fresh: Postings, last: np.ndarray) -> None:
        """Append ``fresh`` (whose positions all follow ours) to every list, byte by byte."""
        fresh_pos, _ = fresh.decode()
        fresh_lengths = np.diff(fresh.indptr)
        byte_parts: list[np.ndarray] = []
        code_parts: list[np.ndarray] = []
        list_bytes = np.diff(self.byteptr).astype(np.int64)
        new_last = last.copy()
        for j in range(self.n_latents):
            byte_parts.append(
                np.asarray(self.position_bytes[self.byteptr[j] : self.byteptr[j + 1]])
            )
            code_parts.append(
                np.asarray(self.activation_codes[self.indptr[j] : self.indptr[j + 1]])
            )
            if not fresh_lengths[j]:
                continue
            lo, hi = int(fresh.indptr[j]), int(fresh.indptr[j + 1])
            first = int(fresh_pos[lo])
            head = int(_varint_sizes(np.array([first]))[0])
            # The first new position is stored as its distance from the list's old last one.
            jump = encode_varints(np.array([first - last[j] if last[j] >= 0 else first]))
            rest = fresh.position_bytes[fresh.byteptr[j] + head : fresh.byteptr[j + 1]]
            byte_parts += [jump, rest]
            code_parts.append(fresh.activation_codes[lo:hi])
            list_bytes[j] += len(jump) + len(rest)
            new_last[j] = fresh_pos[hi - 1]
        self.indptr = (self.indptr + fresh.indptr).astype(np.int64)
        self.byteptr = np.concatenate([[0], np.cumsum(list_bytes)]).astype(np.int64)
        self.position_bytes = np.concatenate(byte_parts)
        self.activation_codes = np.concatenate(code_parts)
        self._decoded = None
        self._by_position = None
        self._last = new_last

    def _activation_codes(self, acts: np.ndarray) -> np.ndarray:
        if self.exact_activations:
            return acts.astype(np.float16)
        return quantize_activations(acts)

    def _store(self, indptr: np.ndarray, positions: np.ndarray, acts: np.ndarray) -> None:
        """Encode sorted postings: varint gaps and activation codes."""
        self._store_coded(indptr, positions, self._activation_codes(acts))

    def _store_coded(self, indptr: np.ndarray, positions: np.ndarray, codes: np.ndarray) -> None:
        """Encode sorted postings whose activations are already coded."""
        gaps = _gaps(positions, indptr)
        sizes = _varint_sizes(gaps)
        byte_sums = np.concatenate([[0], np.cumsum(sizes)])
        self.byteptr = byte_sums[indptr].astype(np.int64)
        self.position_bytes = _encode_varints_sized(gaps, sizes, byte_sums[:-1])
        self.indptr = indptr
        self.activation_codes = codes
        self._decoded = None
        self._by_position = None
        self._last = None

    def decode(self) -> tuple[np.ndarray, np.ndarray]:
        """All postings in CSR order: positions (int32) and activations (float32), cached."""
        if self._decoded is None:
            positions = _undo_gaps(decode_varints(self.position_bytes), self.indptr)
            if self.exact_activations:
                acts = np.asarray(self.activation_codes, np.float32)
            else:
                acts = dequantize_activations(self.activation_codes)
            self._decoded = (positions.astype(np.int32), acts)
        return self._decoded

    def by_position(self, n_positions: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The same postings grouped by position (a forward index), cached until they change.

        Returns latent ids and activations (float32) in position order, and the offset of each
        position's group (``n_positions`` of them): the layout of
        ``torch.nn.functional.embedding_bag``. Ids and offsets are int32 below 2**31 postings.
        The decoded lists are dropped once this is built: the search keeps one copy, 8 bytes a
        posting.
        """
        self.flush()
        if self._by_position is None or len(self._by_position[2]) != n_positions:
            positions, acts = self.decode()
            if len(positions) and (int(positions.min()) < 0 or int(positions.max()) >= n_positions):
                # Gaps are only checksummed at load (decoding them all would cost the load its
                # speed); a file crafted with a valid checksum is caught here, before any use.
                raise IndexLoadError(
                    "postings hold positions outside the indexed tokens; the index is damaged. "
                    "Rebuild the index."
                )
            order = np.argsort(positions, kind="stable")
            counts = np.bincount(positions, minlength=n_positions)
            # embedding_bag wants ids and offsets of one integer type; int32 while it can count.
            index_type = np.int32 if len(positions) < 2**31 else np.int64
            offsets = np.concatenate([[0], np.cumsum(counts)[:-1]]).astype(index_type)
            ids = _list_ids(self.indptr)[order].astype(index_type)
            self._by_position = (ids, acts[order], offsets)
            self._decoded = None
        return self._by_position

    def gather(self, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Postings of several latents at once: (positions, activations, index into latents)."""
        self.flush()
        starts = self.indptr[latents]
        lengths = self.indptr[latents + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(latents)), lengths)
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.repeat(starts, lengths) + offsets
        positions, acts = self.decode()
        return positions[flat].astype(np.int64), acts[flat], owner

    def doc_freq(self) -> np.ndarray:
        """Number of postings per latent."""
        self.flush()
        return np.diff(self.indptr)

    def keep(self, keep_pos: np.ndarray) -> None:
        """Drop postings of removed positions and renumber the rest (``keep_pos`` is a mask)."""
        self.flush()
        positions, acts = self.decode()
        ids = _list_ids(self.indptr)
        alive = keep_pos[positions]
        new_index = (np.cumsum(keep_pos) - 1).astype(np.int64)
        counts = np.bincount(ids[alive], minlength=self.n_latents)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self._store(indptr, new_index[positions[alive]], acts[alive])

    def check(self, n_positions: int) -> str | None:
        """What is inconsistent in the arrays (after loading a file), or ``None``."""
        if self.indptr.shape != (self.n_latents + 1,) or self.byteptr.shape != self.indptr.shape:
            return "postings pointers do not match the dictionary size"
        if self.position_bytes.dtype != np.uint8 or self.activation_codes.dtype != self._code_dtype:
            return "postings arrays have the wrong types"
        if self.indptr.dtype.kind not in "iu" or self.byteptr.dtype.kind not in "iu":
            return "postings pointers are not integers"
        if np.any(np.diff(self.indptr) < 0) or np.any(np.diff(self.byteptr) < 0):
            return "postings pointers are not monotonic"
        if int(self.indptr[-1]) != len(self.activation_codes) or int(self.byteptr[-1]) != len(
            self.position_bytes
        ):
            return "postings pointers do not cover the arrays"
        n_values = int(np.count_nonzero((np.asarray(self.position_bytes) & 0x80) == 0))
        if n_values != len(self.activation_codes):
            return "position bytes do not hold one value per posting"
        # Position bounds need a full decode; the decoded arrays are not built at load time, so
        # the checksum (verified before this) is what vouches for the gaps themselves.
        if len(self.activation_codes) and n_positions == 0:
            return "postings exist for an empty corpus"
        return None

    @property
    def nbytes(self) -> int:
        """Bytes of the compact arrays (what is saved; decoded search arrays not counted)."""
        self.flush()
        arrays = (
            self.indptr,
            self.byteptr,
            self.position_bytes,
            self.activation_codes,
        )
        return int(sum(a.nbytes for a in arrays))

    PARTS = ("indptr", "byteptr", "position_bytes", "activation_codes")
    """The arrays a saved index holds per field, as ``{stem}_{part}.npy``."""

    def save(self, stem: Path) -> None:
        """Write the compact arrays as ``{stem}_{part}.npy``."""
        self.flush()
        for part in self.PARTS:
            write_npy(Path(f"{stem}_{part}.npy"), getattr(self, part))

    def read(
        self,
        arrays: Mapping[str, np.ndarray],
        stem: str,
        n_positions: int,
        format_version: int,
        folder: Path,
    ) -> None:
        """Take the arrays :meth:`save` wrote from ``arrays`` (by file name), then check them.

        Format 1 kept int32 positions and float16 activations; they are re-encoded compactly.
        """
        if format_version == 1:
            self._read_v1(arrays, stem, folder)
        else:
            for part in self.PARTS:
                setattr(self, part, typed(arrays, f"{stem}_{part}.npy", "iuf", "numbers", folder))
        problem = self.check(n_positions)
        if problem:
            raise IndexLoadError(f"{folder}: {problem}; rebuild the index.")

    def _read_v1(self, arrays: Mapping[str, np.ndarray], stem: str, folder: Path) -> None:
        indptr = typed(arrays, f"{stem}_indptr.npy", "iu", "integers", folder)
        positions = typed(arrays, f"{stem}_positions.npy", "iu", "integers", folder)
        activations = typed(arrays, f"{stem}_activations.npy", "f", "floats", folder)
        lengths = np.diff(indptr)
        if (
            indptr.shape != (self.n_latents + 1,)
            or len(positions) != len(activations)
            or (np.any(lengths < 0) or int(indptr[-1]) != len(positions))
        ):
            raise IndexLoadError(
                f"{folder}/{stem}: format-1 postings are inconsistent; rebuild the index."
            )
        ids = np.repeat(np.arange(self.n_latents), lengths)
        self.append(positions.astype(np.int64), ids[:, None], activations[:, None])
        self.flush()
