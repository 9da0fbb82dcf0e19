"""Coded pieces of postings and their splice after a field's lists, without decoding either.

A piece holds the postings of consecutive positions, already in the compact encoding of
:mod:`s3_retriever.index.postings` (varint gaps by latent, one code an activation), with the first
and last position of each of its lists. Pieces of disjoint, ascending runs of positions join by
bytes alone: a list's postings in a later piece follow all of its postings in earlier ones, so
the joined list is the pieces' lists one after the other, each piece's first gap re-measured from
the previous last position. That is the list a sort of all the postings at once would code.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from s3_retriever.index.posting_codes import _encode_varints_sized, _varint_sizes
from s3_retriever.index.postings import Postings, sort_by_latent


@dataclass(frozen=True)
class CodedPiece:
    """Postings of a run of positions, coded; positions counted from the call's first token."""

    postings: Postings
    first: np.ndarray
    """First position of each latent's list (int64, -1 where empty)."""
    last: np.ndarray
    """Last position of each latent's list (int64, -1 where empty)."""


def code_piece(
    n_latents: int, exact_activations: bool, start: int, ids: np.ndarray, codes: np.ndarray
) -> CodedPiece:
    """Code the postings of positions ``start, start + 1, ...``: row ``i`` of ``ids`` and
    ``codes`` (n, k) holds position ``start + i``'s latent ids and activation codes."""
    n, k = ids.shape
    positions = np.repeat(np.arange(start, start + n, dtype=np.int64), k)
    indptr, positions, sorted_codes = sort_by_latent(
        ids.reshape(-1), positions, codes.reshape(-1), n_latents
    )
    postings = Postings(n_latents, exact_activations=exact_activations)
    postings._store_coded(indptr, positions, sorted_codes)
    used = np.diff(indptr) > 0
    first = np.full(n_latents, -1, np.int64)
    last = np.full(n_latents, -1, np.int64)
    first[used] = positions[indptr[:-1][used]]
    last[used] = positions[indptr[1:][used] - 1]
    return CodedPiece(postings, first, last)


def splice_pieces(target: Postings, pieces: list[CodedPiece], offset: int) -> None:
    """Append ``pieces`` (in position order, moved by ``offset``) to every list of ``target``.

    Every moved position must follow all of ``target``'s. The output is written once, list by
    list, so the peak is ``target``, the pieces and the joined arrays, with nothing decoded.
    """
    if not pieces:
        return
    target.flush()
    n_latents = target.n_latents
    if int(target.indptr[-1]) == 0:
        last = np.full(n_latents, -1, np.int64)
    else:
        last = target._last_positions().copy()
    used_first = [p.first[p.first >= 0] for p in pieces]
    lowest = min((int(f.min()) for f in used_first if len(f)), default=None)
    if lowest is not None and lowest + offset <= int(last.max()):
        raise ValueError("pieces must follow every position the postings already hold")
    # Per source (the target, then each piece) and latent: postings, bytes, and the varint of
    # the jump that replaces a piece list's first gap.
    counts = [np.diff(target.indptr)]
    sizes = [np.diff(target.byteptr)]
    jumps: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    heads: list[np.ndarray] = []
    for piece in pieces:
        lengths = np.diff(piece.postings.indptr)
        used = lengths > 0
        first = piece.first + offset
        jump = np.where(used, np.where(last >= 0, first - last, first), 0)
        jump_sizes = np.where(used, _varint_sizes(jump), 0)
        head_sizes = np.where(used, _varint_sizes(np.maximum(piece.first, 0)), 0)
        starts = np.cumsum(jump_sizes) - jump_sizes
        coded = _encode_varints_sized(jump[used], jump_sizes[used], starts[used])
        jumps.append((coded, starts, jump_sizes))
        heads.append(head_sizes)
        counts.append(lengths)
        sizes.append(np.diff(piece.postings.byteptr) - head_sizes + jump_sizes)
        last = np.where(used, piece.last + offset, last)
    count_table, size_table = np.stack(counts), np.stack(sizes)
    indptr = np.concatenate([[0], np.cumsum(count_table.sum(axis=0))]).astype(np.int64)
    byteptr = np.concatenate([[0], np.cumsum(size_table.sum(axis=0))]).astype(np.int64)
    # Where each source's part of each list begins in the joined arrays.
    code_at = indptr[:-1] + np.cumsum(count_table, axis=0) - count_table
    byte_at = byteptr[:-1] + np.cumsum(size_table, axis=0) - size_table
    out_bytes = np.empty(int(byteptr[-1]), np.uint8)
    out_codes = np.empty(int(indptr[-1]), target.activation_codes.dtype)
    _copy_lists(target, 0, out_bytes, out_codes, byte_at[0], code_at[0])
    for s, (piece, coded_jumps, head) in enumerate(zip(pieces, jumps, heads, strict=True), start=1):
        _copy_lists(piece.postings, head, out_bytes, out_codes, byte_at[s], code_at[s], coded_jumps)
    target.indptr, target.byteptr = indptr, byteptr
    target.position_bytes, target.activation_codes = out_bytes, out_codes
    target._decoded = None
    target._by_position = None
    target._last = last


def _copy_lists(
    source: Postings,
    skip: np.ndarray | int,
    out_bytes: np.ndarray,
    out_codes: np.ndarray,
    byte_at: np.ndarray,
    code_at: np.ndarray,
    jumps: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None,
) -> None:
    """Copy every non-empty list of ``source`` to ``byte_at`` / ``code_at``, its first ``skip``
    bytes replaced by its ``jumps`` varint (bytes, start of each, size of each)."""
    skips = np.broadcast_to(np.asarray(skip, np.int64), (source.n_latents,))
    indptr, byteptr = source.indptr, source.byteptr
    for j in np.flatnonzero(np.diff(indptr) > 0):
        at = int(byte_at[j])
        if jumps is not None:
            jump_bytes, jump_starts, jump_sizes = jumps
            size = int(jump_sizes[j])
            begin = int(jump_starts[j])
            out_bytes[at : at + size] = jump_bytes[begin : begin + size]
            at += size
        lo, hi = int(byteptr[j]) + int(skips[j]), int(byteptr[j + 1])
        out_bytes[at : at + hi - lo] = source.position_bytes[lo:hi]
        c_lo, c_hi = int(indptr[j]), int(indptr[j + 1])
        at = int(code_at[j])
        out_codes[at : at + c_hi - c_lo] = source.activation_codes[c_lo:c_hi]
