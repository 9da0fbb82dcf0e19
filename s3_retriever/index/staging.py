"""Keys and SAE codes of one add, staged in the index's own encodings while the scan runs.

Staging every chunk the encoder hands over and coding them all at the commit (the path of
:class:`~s3_retriever.index.scanned.ScannedTexts`) holds a call's raw codes until the end, and
the commit's sort then widens all of them at once (an int64 position and an int64 sort index a
posting): about 35 times the compact postings at its peak. Here the bytes held grow with the
index the call adds, not faster:

- keys are written straight into arrays of the call's final size (int8 codes and float32
  scales, as the key store keeps them), so they are held once;
- postings are gathered in pieces of :data:`PIECE_TOKENS` consecutive positions, activations
  coded to their stored byte as they arrive (3 bytes a posting), and each piece is sorted and
  varint-coded as soon as every one of its positions has arrived, so only one piece at a time is
  ever widened for its sort; the commit splices the coded pieces after the index's lists
  (:func:`s3_retriever.index.posting_merge.splice_pieces`).

The index ends byte for byte as the plain path leaves it: each list is sorted by position
either way, pieces hold disjoint runs of positions, and activation codes are per posting
(tests/index/test_staging.py).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from s3_retriever.index.key_store import QuantizedKeys, quantize_keys
from s3_retriever.index.posting_codes import quantize_activations
from s3_retriever.index.posting_merge import CodedPiece, code_piece
from s3_retriever.index.postings import Field

PIECE_TOKENS = 1 << 16
STAGE_ABOVE_CHARS = 1 << 22
"""``add_documents`` stages calls of more characters than this (about a million tokens);
smaller calls take the plain path, whose peak this bounds to a constant. Staging codes postings
in the scan loop, one field after another: on an H200 with Llama-3.1-8B it cut a 132k-token add
from 0.62 to 0.28 of the direct scan (docs/results/bench_gpu_user_path_staged.md), while the
plain path commits fields in parallel threads after the scan."""
"""Positions per postings piece: a piece's sort widens 65,536 x k postings to about 20 bytes
each (40 MiB at k=32) whatever the document's length, and a 1M-token call keeps 16 pieces."""


def _split_by_piece(positions: np.ndarray, piece_tokens: int) -> list[tuple[int, np.ndarray]]:
    """(piece, mask of ``positions`` in it) for every piece that ``positions`` touch."""
    pieces = positions // piece_tokens
    first, last = int(pieces[0]), int(pieces[-1])
    if first == last and int(pieces.min()) == first:
        return [(first, np.ones(len(positions), bool))]
    return [(int(p), pieces == p) for p in np.unique(pieces)]


@dataclass
class KeyStage:
    """The call's int8 keys and scales, at positions counted from its first token."""

    codes: np.ndarray
    scales: np.ndarray
    written: int = 0

    @classmethod
    def empty(cls, n_positions: int, head_dim: int) -> KeyStage:
        # Zeroed pages cost nothing until written, and every position is written once.
        return cls(np.zeros((n_positions, head_dim), np.int8), np.zeros(n_positions, np.float32))

    def append(self, item: tuple[np.ndarray, QuantizedKeys | np.ndarray]) -> None:
        """Take one chunk as :class:`~s3_retriever.index.key_store.KeyStore` would."""
        positions, keys = item
        quantized = keys if isinstance(keys, QuantizedKeys) else quantize_keys(keys)
        self.codes[positions] = quantized.codes
        self.scales[positions] = quantized.scales
        self.written += len(positions)


@dataclass
class _RawPiece:
    """One piece's (latent id, activation code) pairs by position, until every position came."""

    ids: np.ndarray
    codes: np.ndarray
    missing: int


@dataclass
class PostingsStage:
    """The call's postings of one field, coded piece by piece as their positions arrive."""

    n_latents: int
    exact_activations: bool
    n_positions: int
    piece_tokens: int
    coded: dict[int, CodedPiece] = field(default_factory=dict)
    written: int = 0
    _raw: dict[int, _RawPiece] = field(default_factory=dict)

    def append(self, item: tuple[np.ndarray, np.ndarray, np.ndarray]) -> None:
        """Take ``(positions, latent ids (n, k), activations (n, k))`` of one chunk; each
        position comes once in a call."""
        positions, ids, acts = item
        if not len(positions):
            return
        codes = acts.astype(np.float16) if self.exact_activations else quantize_activations(acts)
        for piece, inside in _split_by_piece(positions, self.piece_tokens):
            raw = self._raw.get(piece)
            if raw is None:
                raw = self._raw[piece] = self._new_raw(piece, ids.shape[1], ids.dtype, codes.dtype)
            rows = positions[inside] - piece * self.piece_tokens
            raw.ids[rows] = ids[inside]
            raw.codes[rows] = codes[inside]
            raw.missing -= len(rows)
            self.written += len(rows)
            if raw.missing == 0:
                self._code(piece)

    def _new_raw(self, piece: int, k: int, id_type: np.dtype, code_type: np.dtype) -> _RawPiece:
        start = piece * self.piece_tokens
        size = min(self.piece_tokens, self.n_positions - start)
        return _RawPiece(np.zeros((size, k), id_type), np.zeros((size, k), code_type), size)

    def _code(self, piece: int) -> None:
        raw = self._raw.pop(piece)
        self.coded[piece] = code_piece(
            self.n_latents, self.exact_activations, piece * self.piece_tokens, raw.ids, raw.codes
        )

    def pieces(self) -> list[CodedPiece]:
        """Every piece, coded, in position order (:meth:`Staged.check` first)."""
        return [self.coded[p] for p in sorted(self.coded)]


@dataclass
class Staged:
    """Everything one add stages for its commit, per field, at call-relative positions."""

    n_positions: int
    keys: dict[Field, KeyStage]
    postings: dict[Field, PostingsStage]

    @classmethod
    def for_call(
        cls,
        n_positions: int,
        key_fields: Sequence[Field],
        head_dim: int,
        postings: Mapping[Field, tuple[int, bool]],
        piece_tokens: int | None = None,
    ) -> Staged:
        """Empty stages for a call of ``n_positions`` tokens: ``postings`` maps each field to its
        dictionary size and whether it keeps float16 activations."""
        piece = piece_tokens or PIECE_TOKENS
        return cls(
            n_positions,
            {f: KeyStage.empty(n_positions, head_dim) for f in key_fields},
            {f: PostingsStage(n, exact, n_positions, piece) for f, (n, exact) in postings.items()},
        )

    def check(self) -> None:
        """Refuse a stage that some of its positions never reached (each comes once)."""
        stages: list[KeyStage | PostingsStage] = [*self.keys.values(), *self.postings.values()]
        for stage in stages:
            if stage.written != self.n_positions:
                raise RuntimeError(
                    f"{self.n_positions - stage.written} of {self.n_positions} staged positions "
                    "were never scanned"
                )
