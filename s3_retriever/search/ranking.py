"""Unit scores -> ranked groups of units, each group one span to be grown.

S3-Pure ranks the smoothed peaks, BM25 the units that share a term with the question, and the
hybrid fuses both (:mod:`.fusion`). The lead and tail of each document come first when the hybrid
settings ask for them. Groups are grown lazily: packing stops once the budget is full, so only
the units it actually examines pay for growth.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable, Iterator

import numpy as np

from s3_retriever.index.corpus import Corpus
from s3_retriever.search.fusion import HybridConfig, fuse, rank_order
from s3_retriever.search.peaks import iter_peak_units
from s3_retriever.search.settings import Mode, SearchSettings
from s3_retriever.search.spans import Seed, grow, n_peak_candidates, seed_bound
from s3_retriever.search.units import Components

_MAX_SEEDS = 4096
"""Ranked units offered to packing at most (far more than any budget takes)."""


def rank(
    components: Components,
    mode: Mode,
    unit_mask: np.ndarray,
    token_budget: int,
    corpus: Corpus,
    settings: SearchSettings,
) -> tuple[Iterator[list[int] | Seed], np.ndarray]:
    """Ranked groups of units and the score that ranked them."""
    # Growth stops at a quarter of the budget, so about four spans always fit: the needle test
    # found the right peak ranked third, which 128-token spans in a 256 budget would drop.
    min_tokens = min(settings.spans.min_span_tokens, max(token_budget // 4, 1))
    order: Iterable[int]
    if mode == "s3" and "s3_positions" not in components:
        # Coverage pooling scored units directly (.coverage): they rank like BM25's.
        scores = components["s3"]
        order = rank_order(scores, unit_mask & (scores > 0))
    elif mode == "s3":
        scores = components["s3"]
        # Filtered-out positions already scored zero; peaks there are dropped below. Peaks are
        # picked only as far as packing reads them.
        smoothed = components["s3_positions"]
        n_candidates = n_peak_candidates(corpus.n_positions, settings.spans, _MAX_SEEDS)
        peaks = iter_peak_units(smoothed, corpus, settings.spans.nms_radius, n_candidates)
        order = (u for u in itertools.islice(peaks, _MAX_SEEDS) if unit_mask[u])
    elif mode == "bm25":
        scores = components["bm25"]
        # Units sharing no term with the query are not evidence; they would only pad.
        order = rank_order(scores, unit_mask & (scores > 0))
    else:
        order, scores = fuse(components["s3"], components["bm25"], settings.hybrid, unit_mask)
    counts = corpus.unit_token_counts()
    lead = lead_tail_groups(corpus, settings.hybrid, unit_mask, counts)
    within = settings.spans.within_paragraph
    regions = corpus.unit_regions(within)
    grown = (
        Seed(
            int(u),
            functools.partial(grow, int(u), corpus, scores, min_tokens, counts, within),
            seed_bound(int(u), regions, min_tokens),
        )
        for u in itertools.islice(order, _MAX_SEEDS)
    )
    return itertools.chain(lead, grown), scores


def lead_tail_groups(
    corpus: Corpus, hybrid: HybridConfig, unit_mask: np.ndarray, counts: np.ndarray
) -> list[list[int]]:
    """The first ``lead_tokens`` and last ``tail_tokens`` of every document, as unit groups."""
    if hybrid.lead_tokens == 0 and hybrid.tail_tokens == 0:
        return []
    groups: list[list[int]] = []
    for row in range(len(corpus)):
        units = np.flatnonzero((corpus.unit_doc == row) & unit_mask)
        for budget, seq in ((hybrid.lead_tokens, units), (hybrid.tail_tokens, units[::-1])):
            taken, used = [], 0
            for u in seq.tolist():
                if used + counts[u] > budget:
                    break
                taken.append(u)
                used += int(counts[u])
            if taken:
                groups.append(sorted(taken))
    return groups
