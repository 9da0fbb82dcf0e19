"""Position scores kept as the positions a search read, and the span steps over them.

The clustered exact search (:mod:`.clustered`) reads about ``positions_per_row`` keys per
question row whatever the corpus size; every other position scores zero. Smoothing, unit scores
and peak picking over a dense array would still walk every indexed position (docs/performance.md:
end-to-end ``retrieve`` 1.3 s at 10M tokens against a 0.08 s search). Here they walk only the
positions read and their smoothing windows, and compute the same numbers as the dense
:func:`~s3_retriever.search.spans.smooth` and :func:`~s3_retriever.search.spans.unit_scores`:
the running sums are the dense ones (adding zeros leaves a float64 sum unchanged), so the
smoothed values are equal bit for bit (tests/search/test_sparse.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from s3_retriever.index.corpus import Corpus


@dataclass(frozen=True)
class SparseScores:
    """Scores at ``positions`` (ascending, unique); every other position scores zero."""

    positions: np.ndarray
    values: np.ndarray
    n_positions: int

    def dense(self) -> np.ndarray:
        """The same scores as one array over every position."""
        out = np.zeros(self.n_positions, np.float32)
        out[self.positions] = self.values
        return out


def head_mean(parts: Sequence[tuple[np.ndarray, np.ndarray]], n_heads: int, n: int) -> SparseScores:
    """Sum of per-field (positions, scores) parts, divided by ``n_heads``, as
    :func:`~s3_retriever.search.scoring.score_positions` does densely (float32, in part order)."""
    if not parts:
        return SparseScores(np.zeros(0, np.int64), np.zeros(0, np.float32), n)
    positions, inverse = _sorted_unique(np.concatenate([p for p, _ in parts]))
    total = np.zeros(len(positions), np.float32)
    offset = 0
    for part_positions, values in parts:
        # Positions are unique within a part, so this fancy-indexed add adds each value once.
        total[inverse[offset : offset + len(part_positions)]] += values
        offset += len(part_positions)
    return SparseScores(positions.astype(np.int64), total / n_heads, n)


def _sorted_unique(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sorted distinct values and each input's index among them (``np.unique`` with
    ``return_inverse``, by one sort: numpy 2.4's hash-based unique took 0.2 s on 1M ints)."""
    order = np.argsort(values, kind="stable")
    ordered = values[order]
    new = np.concatenate([[True], ordered[1:] != ordered[:-1]]) if len(ordered) else ordered > 0
    inverse = np.empty(len(values), np.int64)
    inverse[order] = np.cumsum(new) - 1
    return ordered[new], inverse


def document_bounds(corpus: Corpus, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """First and one-past-last position of the document holding each position."""
    # side="right": an empty document starts where the next one does and owns no position.
    row = np.searchsorted(corpus.doc_token_start, positions, side="right") - 1
    start = corpus.doc_token_start[row]
    return start, start + corpus.doc_token_count[row]


def _windows(
    raw: SparseScores,
    corpus: Corpus,
    half: int,
    bounds: tuple[np.ndarray, np.ndarray] | None = None,
) -> tuple[np.ndarray, ...]:
    """The union of the read positions' smoothing windows as runs [lo, hi), each inside one
    document, with that document's bounds: (lo, hi, doc_start, doc_end). ``bounds``: the
    read positions' :func:`document_bounds`, when the caller has them."""
    read = raw.positions
    doc_start, doc_end = bounds if bounds is not None else document_bounds(corpus, read)
    # Position q's window holds p when |q - p| <= half in one document, so the positions with a
    # non-zero mean are the union of these windows (each inside one document, in order).
    lo = np.maximum(read - half, doc_start)
    hi = np.minimum(read + half + 1, doc_end)
    new_run = np.concatenate([[True], lo[1:] >= np.maximum.accumulate(hi)[:-1]])
    first = np.flatnonzero(new_run)
    return lo[first], np.maximum.reduceat(hi, first), doc_start[first], doc_end[first]


def _smoothed_at(
    raw: SparseScores, at: np.ndarray, start: np.ndarray, end: np.ndarray, half: int
) -> np.ndarray:
    """The dense box-filter mean at positions ``at`` (documents [start, end)), from the read
    positions alone: cumulative[searchsorted(read, x)] is the dense running sum up to x."""
    window_lo = np.maximum(at - half, start)
    window_hi = np.minimum(at + half + 1, end)
    cumulative = np.concatenate([[0.0], np.cumsum(raw.values, dtype=np.float64)])
    read = raw.positions
    sums = (
        cumulative[np.searchsorted(read, window_hi)] - cumulative[np.searchsorted(read, window_lo)]
    )
    return (sums / (window_hi - window_lo)).astype(np.float32)


def _expand(lo: np.ndarray, hi: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Every position of the runs [lo, hi), and the run each belongs to."""
    lengths = np.maximum(hi - lo, 0)
    offsets = np.cumsum(lengths) - lengths
    run = np.repeat(np.arange(len(lo)), lengths)
    return np.repeat(lo - offsets, lengths) + np.arange(int(lengths.sum())), run


def smooth_sparse(raw: SparseScores, corpus: Corpus, width: int) -> SparseScores:
    """:func:`~s3_retriever.search.spans.smooth` of ``raw``, at the positions it can change."""
    if width <= 1 or len(raw.positions) == 0:
        return SparseScores(raw.positions, raw.values.astype(np.float32), raw.n_positions)
    half = width // 2
    run_lo, run_hi, run_start, run_end = _windows(raw, corpus, half)
    support, run = _expand(run_lo, run_hi)
    smoothed = _smoothed_at(raw, support, run_start[run], run_end[run], half)
    return SparseScores(support, smoothed, raw.n_positions)


def unit_scores_from_raw(raw: SparseScores, corpus: Corpus, width: int) -> np.ndarray:
    """``unit_scores(smooth_sparse(raw))`` without smoothing every position of the windows.

    Away from a document's edges the window sum is constant between breakpoints (where a read
    position enters or leaves the window) and the window length is ``width``, so a unit's best
    mean is at its first position or at a breakpoint inside it; within ``half`` of an edge the
    length changes, so those positions are all evaluated. Scores are never negative, so where
    a read position only leaves the window the sum cannot rise (the running sums grow
    monotonically, and float subtraction and division are monotone too): only the positions
    where one enters are needed. The values are computed exactly as the dense ones, so the
    maxima are equal.
    """
    if width <= 1 or len(raw.positions) == 0:
        return unit_scores_sparse(smooth_sparse(raw, corpus, width), corpus)
    half = width // 2
    read = raw.positions
    read_start, read_end = document_bounds(corpus, read)
    run_lo, run_hi, run_start, run_end = _windows(raw, corpus, half, (read_start, read_end))
    # Breakpoints: where each read position enters a window.
    points = [np.maximum(read - half, read_start)]
    # First positions of the units that begin inside a run.
    starts = corpus.nonempty_units()[1]  # ascending: units are in position order
    first, last = np.searchsorted(starts, run_lo), np.searchsorted(starts, run_hi)
    points.append(starts[_expand(first, last)[0]])
    # Positions near a document edge, where the window is shorter.
    points.append(_expand(run_lo, np.minimum(run_hi, run_start + half))[0])
    points.append(_expand(np.maximum(run_lo, run_end - half), run_hi)[0])
    at = _sorted_unique(np.concatenate(points))[0]
    start, end = document_bounds(corpus, at)
    values = _smoothed_at(raw, at, start, end, half)
    return unit_scores_sparse(SparseScores(at, values, raw.n_positions), corpus)


def unit_of_positions(corpus: Corpus, positions: np.ndarray) -> np.ndarray:
    """Unit owning each position (-1 where none does), without a table over every position."""
    nonempty, starts = corpus.nonempty_units()
    if len(nonempty) == 0:
        return np.full(len(positions), -1, np.int64)
    slot = np.searchsorted(starts, positions, side="right") - 1
    unit = np.take(nonempty, np.maximum(slot, 0))
    owned = (slot >= 0) & (positions < np.take(corpus.unit_tokens[:, 1], unit))
    return np.where(owned, unit, -1).astype(np.int64)


def unit_scores_sparse(smoothed: SparseScores, corpus: Corpus) -> np.ndarray:
    """:func:`~s3_retriever.search.spans.unit_scores` of sparse scores. Attention scores are
    never negative, so the unread (zero) positions of a unit never raise its best score."""
    out = np.zeros(corpus.n_units, np.float32)
    units = unit_of_positions(corpus, smoothed.positions)
    owned = units >= 0
    units, values = units[owned], smoothed.values[owned]
    if len(units):
        first = np.flatnonzero(np.concatenate([[True], units[1:] != units[:-1]]))
        out[units[first]] = np.maximum.reduceat(values, first)
    return out
