"""Peak picking with non-maximum suppression, lazily, over dense or sparse position scores.

Positions are taken best first (ties by position) and a peak suppresses the positions within
``nms_radius`` of it in its document; each surviving peak names the unit that holds it. Packing
(:func:`~s3_retriever.search.spans.pack`) usually stops after a few dozen spans, so peaks are
produced on demand, and the candidates are sorted a chunk at a time: a query sorts the few
thousand best positions it uses, not the ``limit x (2 nms_radius + 1)`` it might.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np

from s3_retriever.index.corpus import Corpus
from s3_retriever.search.sparse import SparseScores, document_bounds, unit_of_positions

_FIRST_CHUNK = 2048
"""Candidates sorted in the first chunk; each later chunk is four times larger."""


def _best_first(positions: np.ndarray, values: np.ndarray, limit: int) -> Iterator[np.ndarray]:
    """The ``limit`` best ``positions`` (and any tied with the last) by descending value, ties
    by ascending position, a sorted chunk at a time."""
    remaining = _best(np.arange(len(positions)), values, limit)
    chunk = _FIRST_CHUNK
    while len(remaining):
        head = _best(remaining, values, chunk)
        taken = np.zeros(len(values), bool)
        taken[head] = True
        remaining = remaining[~taken[remaining]]
        head = head[np.lexsort((positions[head], -values[head]))]
        yield positions[head]
        chunk *= 4


def _best(indices: np.ndarray, values: np.ndarray, count: int) -> np.ndarray:
    """The ``count`` entries of ``indices`` with the highest values, plus any tied with the
    lowest of them (so ties can be ordered by position afterwards)."""
    if len(indices) <= count:
        return indices
    split = np.argpartition(-values[indices], count - 1)
    head, rest = indices[split[:count]], indices[split[count:]]
    return np.concatenate([head, rest[values[rest] == values[head].min()]])


def _first_unlisted(listed: np.ndarray, count: int, n_positions: int) -> np.ndarray:
    """The ``count`` smallest positions below ``n_positions`` that are not in sorted ``listed``."""
    span = np.arange(min(n_positions, count + len(listed)))
    at = np.searchsorted(listed, span)
    present = (at < len(listed)) & (listed[np.minimum(at, len(listed) - 1)] == span)
    return span[~present][:count]


def ranked_positions(scores: np.ndarray | SparseScores, n_candidates: int) -> Iterator[np.ndarray]:
    """The ``n_candidates`` best positions in (score desc, position asc) order, in chunks.

    Unlisted positions of sparse scores score zero: they follow the positive ones, lowest
    position first, and precede any negative score.
    """
    if isinstance(scores, SparseScores):
        positions, values, n_positions = scores.positions, scores.values, scores.n_positions
    else:
        positions, values, n_positions = np.arange(len(scores)), scores, len(scores)
    nonzero = values != 0
    positions, values = positions[nonzero], values[nonzero]
    positive = values > 0
    n_zeros = n_positions - len(positions)
    left = n_candidates

    def groups() -> Iterator[np.ndarray]:
        yield from _best_first(positions[positive], values[positive], n_candidates)
        if n_zeros:
            yield _first_unlisted(positions, min(left, n_zeros), n_positions)
        yield from _best_first(positions[~positive], values[~positive], n_candidates)

    for chunk in groups():
        if left <= 0:
            return
        yield chunk[:left]
        left -= len(chunk)


def iter_peak_units(
    scores: np.ndarray | SparseScores, corpus: Corpus, nms_radius: int, n_candidates: int
) -> Iterator[int]:
    """Units holding the strongest peaks among the ``n_candidates`` best positions, best first,
    each unit once. A peak suppresses only its own document: a short document beside a strong
    one keeps its peak."""
    suppressed = np.zeros(corpus.n_positions, dtype=bool)
    seen: set[int] = set()
    for chunk in ranked_positions(scores, n_candidates):
        doc_start, doc_end = document_bounds(corpus, chunk)
        lows = np.maximum(chunk - nms_radius, doc_start).tolist()
        highs = np.minimum(chunk + nms_radius + 1, doc_end).tolist()
        owners = unit_of_positions(corpus, chunk).tolist()
        for position, lo, hi, unit in zip(chunk.tolist(), lows, highs, owners, strict=True):
            if suppressed[position]:
                continue
            suppressed[lo:hi] = True
            if unit < 0 or unit in seen:
                continue
            seen.add(unit)
            yield unit
