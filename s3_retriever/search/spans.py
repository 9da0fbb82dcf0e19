"""From position scores to evidence spans (S3 step 5) and from ranked units to a token budget.

Scores are smoothed with a box filter inside each document, peaks are picked with non-maximum
suppression, and each peak grows to the unit (sentence or line) that holds it, then to its
neighbours while the span is shorter than ``min_span_tokens``.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import numpy as np

from s3_retriever.index.corpus import Corpus
from s3_retriever.search.peaks import iter_peak_units


@dataclass(frozen=True)
class SpanConfig:
    """Smoothing, peak picking and span growth."""

    smooth_width: int = 15
    """Box-filter width in tokens (odd); 1 disables smoothing. Tuned on HotpotQA questions
    300-339 (docs/results/tune_spans_grid.json): 15 beat 5 and 31."""
    nms_radius: int = 16
    """A peak suppresses other peaks within this many tokens of it."""
    min_span_tokens: int = 128
    """A span grows into neighbouring units of its document until it has this many tokens.
    Tuned like ``smooth_width``: growing to 128 tokens raised S3-Pure recall@1024 from 0.58 to
    0.81 (BM25 with the same growth: 0.66), since a peak usually lands inside the evidence."""
    within_paragraph: bool = True
    """Growth stops at a blank line, so a span never spends budget on the neighbouring paragraph
    (in a haystack of short passages, a distractor). On the HotpotQA tuning questions it raised
    S3-Hybrid recall@1024 from 0.745 to 0.952 on 9k-word haystacks and from 0.862 to 0.941 on
    3k-word ones; a text without blank lines (a QMSum transcript) is unaffected
    (docs/results/ablations/ablation_within_paragraph_*)."""

    min_relevance: float = 0.05
    """The relevance floor (:mod:`s3_retriever.search.relevance`): a unit whose best component
    score is below this share of that component's best unit for the question starts no span, so
    spans without evidence never pad the budget. 0 fills the budget whatever the evidence (the
    evaluation does, so methods compare at equal tokens)."""

    def __post_init__(self) -> None:
        if not 0.0 <= self.min_relevance <= 1.0:
            raise ValueError(f"min_relevance must be in [0, 1], got {self.min_relevance}")
        if self.smooth_width < 1:
            raise ValueError("smooth_width must be at least 1")
        if self.nms_radius < 0 or self.min_span_tokens < 0:
            raise ValueError("nms_radius and min_span_tokens must not be negative")


def smooth(scores: np.ndarray, corpus: Corpus, width: int) -> np.ndarray:
    """Box-filter mean over ``width`` tokens, never mixing two documents."""
    if width <= 1 or len(scores) == 0:
        return scores.astype(np.float32)
    half = width // 2
    doc_start, doc_end = corpus.position_doc_bounds()
    cumulative = np.concatenate([[0.0], np.cumsum(scores, dtype=np.float64)])
    positions = np.arange(len(scores))
    lo = np.maximum(positions - half, doc_start)
    hi = np.minimum(positions + half + 1, doc_end)
    return ((cumulative[hi] - cumulative[lo]) / (hi - lo)).astype(np.float32)


def unit_scores(position_scores: np.ndarray, corpus: Corpus) -> np.ndarray:
    """Each unit's score: the highest (smoothed) position score inside it; 0 for empty units."""
    out = np.zeros(corpus.n_units, np.float32)
    tokens = corpus.unit_tokens
    nonempty = np.flatnonzero(tokens[:, 1] > tokens[:, 0])
    if len(nonempty) and len(position_scores):
        # Positions no unit owns (whitespace-only documents) must not leak into a neighbour.
        owned = np.where(position_units(corpus) >= 0, position_scores, -np.inf)
        out[nonempty] = np.maximum.reduceat(owned, tokens[nonempty, 0])
    return out


def peak_units(smoothed: np.ndarray, corpus: Corpus, config: SpanConfig, limit: int) -> list[int]:
    """Units holding the strongest peaks, best first, after non-maximum suppression
    (:func:`~s3_retriever.search.peaks.iter_peak_units` over every position)."""
    return list(
        itertools.islice(
            iter_peak_units(
                smoothed, corpus, config.nms_radius, n_peak_candidates(len(smoothed), config, limit)
            ),
            limit,
        )
    )


def n_peak_candidates(n_positions: int, config: SpanConfig, limit: int) -> int:
    """How many of the best positions may become peaks: a bounded set keeps peak picking
    O(limit), whatever the corpus size."""
    return min(n_positions, max(limit * (2 * config.nms_radius + 1), 1024))


def peaks(
    smoothed: np.ndarray, corpus: Corpus, config: SpanConfig, limit: int
) -> list[tuple[int, int]]:
    """:func:`peak_units` with the position of each unit's peak: ``(unit, position)``.

    The position is what orders peaks (by its score, ties by position); a sharded search merges
    its shards' peaks by it.
    """
    if len(smoothed) == 0:
        return []
    n_candidates = n_peak_candidates(len(smoothed), config, limit)
    candidates = np.argpartition(-smoothed, n_candidates - 1)[:n_candidates]
    candidates = candidates[np.lexsort((candidates, -smoothed[candidates]))]
    owner = position_units(corpus)
    # A peak suppresses only its own document: a short document beside a strong one keeps its peak.
    doc_start, doc_end = corpus.position_doc_bounds()
    suppressed = np.zeros(len(smoothed), dtype=bool)
    radius = config.nms_radius
    units: list[tuple[int, int]] = []
    seen: set[int] = set()
    for position in candidates.tolist():
        if suppressed[position]:
            continue
        lo = max(position - radius, int(doc_start[position]))
        suppressed[lo : min(position + radius + 1, int(doc_end[position]))] = True
        unit = int(owner[position])
        if unit < 0 or unit in seen:
            continue
        seen.add(unit)
        units.append((unit, position))
        if len(units) >= limit:
            break
    return units


def position_units(corpus: Corpus) -> np.ndarray:
    """Unit of every global position (-1 where no unit owns it)."""
    owner = np.full(corpus.n_positions, -1, np.int64)
    starts = corpus.unit_tokens[:, 0]
    lengths = corpus.unit_tokens[:, 1] - starts
    total = int(lengths.sum())
    if total:
        run_offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        owner[np.repeat(starts, lengths) + run_offsets] = np.repeat(
            np.arange(corpus.n_units), lengths
        )
    return owner


def grow(
    unit: int,
    corpus: Corpus,
    scores: np.ndarray,
    min_tokens: int,
    counts: np.ndarray,
    within_paragraph: bool = False,
) -> list[int]:
    """The unit plus its better-scoring neighbours in the same document, up to ``min_tokens``.

    ``counts`` are the units' token counts, computed once per query by the caller. With
    ``within_paragraph``, a neighbour across a blank line is never taken.
    """
    # A span grows only inside its region (Corpus.unit_regions): one document, cut at blank
    # lines when within_paragraph.
    region = corpus.unit_regions(within_paragraph)[0]
    own = region[unit]
    chosen = [unit]
    size = int(counts[unit])
    left, right = unit - 1, unit + 1
    n_units = corpus.n_units
    while size < min_tokens:
        can_left = left >= 0 and region[left] == own
        can_right = right < n_units and region[right] == own
        if can_left and can_right:
            # The better score wins; a tie goes to the left (lower) unit.
            best = left if scores[left] >= scores[right] else right
        elif can_left:
            best = left
        elif can_right:
            best = right
        else:
            break
        chosen.append(best)
        size += int(counts[best])
        if best == left:
            left -= 1
        else:
            right += 1
    return sorted(chosen)


def paragraph_starts(corpus: Corpus) -> np.ndarray:
    """Whether each unit opens a paragraph: the first unit of its document, or one after a
    blank line (the breaks that growth with ``within_paragraph`` never crosses)."""
    doc = corpus.unit_doc
    first = np.ones(corpus.n_units, dtype=bool)
    first[1:] = doc[1:] != doc[:-1]
    return first | corpus.paragraph_breaks()


@dataclass(frozen=True)
class Seed:
    """A ranked unit whose span is grown only when :func:`pack` might take it."""

    unit: int
    grow: Callable[[], list[int]]
    min_size: int = 0
    """Tokens its grown span has at least while no unit of its region is chosen:
    ``min(min_tokens, tokens of the region)``, since growth stops only there."""


def seed_bound(unit: int, regions: tuple[np.ndarray, np.ndarray], min_tokens: int) -> int:
    """:attr:`Seed.min_size` of ``unit`` for regions of :meth:`Corpus.unit_regions`."""
    region, region_tokens = regions
    return min(min_tokens, int(region_tokens[region[unit]]))


def pack(
    ranked_groups: Iterable[list[int] | Seed],
    counts: np.ndarray,
    budget: int,
    corpus: Corpus,
    max_spans: int | None = None,
    regions: np.ndarray | None = None,
) -> list[int]:
    """Take groups of units in rank order while they fit ``budget`` tokens; skip those that don't.

    A group is all-or-nothing (a grown span is not cut in half). With ``max_spans``, a group that
    would open one span too many is skipped, while groups that extend a chosen span still join.
    A :class:`Seed` is grown only if its own unit could still fit: its span holds the seed, so it
    costs at least the seed's tokens. With ``regions`` (the region of every unit, as its seeds'
    ``min_size`` was computed), a seed whose region holds no chosen unit is grown only if
    ``min_size`` tokens still fit: its grown span would cost at least that. Returns the chosen
    unit ids.
    """
    chosen: set[int] = set()
    touched: set[int] = set()
    used = 0
    # Once less than the smallest unit is left, no group can add anything.
    smallest = int(counts.min()) if len(counts) else 0
    for item in ranked_groups:
        if isinstance(item, Seed):
            if item.unit not in chosen and used + int(counts[item.unit]) > budget:
                continue
            if (
                regions is not None
                and used + item.min_size > budget
                and int(regions[item.unit]) not in touched
            ):
                continue
            group = item.grow()
        else:
            group = item
        new = [u for u in group if u not in chosen]
        cost = int(counts[new].sum()) if new else 0
        if not new or used + cost > budget:
            continue
        if max_spans is not None:
            candidate = sorted(chosen.union(new))
            if len(merge_adjacent(candidate, corpus)) > max_spans:
                continue
        chosen.update(new)
        if regions is not None:
            touched.update(regions[new].tolist())
        used += cost
        if used >= budget or budget - used < smallest:
            break
    return sorted(chosen)


def run_text(run: list[int], corpus: Corpus) -> str:
    """The text of a run of adjacent units."""
    row = int(corpus.unit_doc[run[0]])
    start = int(corpus.unit_chars[run[0], 0])
    end = int(corpus.unit_chars[run[-1], 1])
    return corpus.texts[row][start:end]


def fit_standalone(
    runs: list[list[int]],
    corpus: Corpus,
    ranked_score: np.ndarray,
    token_budget: int,
    count_tokens: Callable[[str], int],
) -> list[list[int]]:
    """The runs that fit ``token_budget`` when each run's text is tokenised on its own.

    Packing charges a unit the tokens of the whole document that end inside it; a span's
    text tokenised alone can take a token more at its edges (a word split by the unit
    boundary is re-merged differently), which is the count a user makes. Runs are kept best
    first while that count fits; the rest (rare: 2 sets in about 4,000 went over) are
    dropped, so the budget holds under both counts.
    """
    standalone = [count_tokens(run_text(run, corpus)) for run in runs]
    scores = [float(ranked_score[run].max()) for run in runs]
    return [runs[i] for i in standalone_fit(standalone, scores, token_budget)]


def standalone_fit(standalone: Sequence[int], scores: Sequence[float], budget: int) -> list[int]:
    """Which spans :func:`fit_standalone` keeps, given each span's own token count and score:
    all when they fit, else best first while they fit (ties in the given order). Returns their
    indices in the given order."""
    if sum(standalone) <= budget:
        return list(range(len(standalone)))
    keep: set[int] = set()
    used = 0
    for i in sorted(range(len(standalone)), key=lambda i: -scores[i]):
        if used + standalone[i] <= budget:
            keep.add(i)
            used += standalone[i]
    return sorted(keep)


def merge_adjacent(units: list[int], corpus: Corpus) -> list[list[int]]:
    """Group sorted unit ids into runs of consecutive units of one document."""
    runs: list[list[int]] = []
    for unit in units:
        if (
            runs
            and unit == runs[-1][-1] + 1
            and corpus.unit_doc[unit] == corpus.unit_doc[runs[-1][-1]]
        ):
            runs[-1].append(unit)
        else:
            runs.append([unit])
    return runs
