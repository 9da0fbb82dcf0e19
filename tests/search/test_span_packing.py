"""Lazy span growth in packing takes exactly the spans eager growth takes."""

from __future__ import annotations

import functools

import numpy as np
import pytest

from s3_retriever import S3Retriever
from s3_retriever.search.spans import Seed, grow, pack, seed_bound


@pytest.mark.parametrize("seed", range(6))
def test_seeds_pack_like_grown_groups(indexed: S3Retriever, seed: int) -> None:
    """Random scores, seed orders, budgets and span limits: growing a seed only when its own
    unit could still fit changes nothing in the result, and skips growth once the budget is
    nearly full."""
    corpus = indexed.index.corpus
    counts = corpus.unit_token_counts()
    rng = np.random.default_rng(seed)
    grown_calls = 0

    def counted_grow(unit: int, min_tokens: int, scores: np.ndarray) -> list[int]:
        nonlocal grown_calls
        grown_calls += 1
        return grow(unit, corpus, scores, min_tokens, counts)

    for _ in range(20):
        scores = rng.random(corpus.n_units)
        order = rng.permutation(corpus.n_units)
        min_tokens = int(rng.integers(1, 80))
        budget = int(rng.integers(1, int(counts.sum()) // 2))
        max_spans = None if rng.random() < 0.5 else int(rng.integers(1, 6))
        lead = [[int(order[-1])]] if rng.random() < 0.3 else []
        eager = lead + [grow(int(u), corpus, scores, min_tokens, counts) for u in order]
        lazy = lead + [
            Seed(int(u), functools.partial(counted_grow, int(u), min_tokens, scores)) for u in order
        ]
        want = pack(eager, counts, budget, corpus, max_spans)
        assert pack(lazy, counts, budget, corpus, max_spans) == want
    assert grown_calls < 20 * corpus.n_units


def test_a_chosen_seed_still_grows_into_room_left(indexed: S3Retriever) -> None:
    """A seed whose unit is already taken (by a lead group) costs only its new neighbours: it is
    grown even when its own unit would no longer fit."""
    corpus = indexed.index.corpus
    counts = corpus.unit_token_counts()
    # A unit with a smaller next neighbour in the same document.
    unit = next(
        u
        for u in range(corpus.n_units - 1)
        if corpus.unit_doc[u] == corpus.unit_doc[u + 1] and counts[u] > counts[u + 1]
    )
    scores = np.zeros(corpus.n_units)
    scores[unit + 1] = 1.0  # growth prefers the right neighbour
    min_tokens = int(counts[unit] + counts[unit + 1])
    budget = min_tokens
    seed = Seed(unit, functools.partial(grow, unit, corpus, scores, min_tokens, counts))
    assert pack([[unit], seed], counts, budget, corpus) == [unit, unit + 1]


@pytest.mark.parametrize("within", [True, False])
@pytest.mark.parametrize("seed", range(4))
def test_region_bounds_skip_growth_without_changing_the_result(
    indexed: S3Retriever, seed: int, within: bool
) -> None:
    """The fast path of packing (a seed whose region holds no chosen unit is not grown when
    ``min(min_tokens, region tokens)`` cannot fit) takes exactly what the plain path takes, and
    grows fewer seeds."""
    corpus = indexed.index.corpus
    counts = corpus.unit_token_counts()
    regions = corpus.unit_regions(within)
    rng = np.random.default_rng(100 + seed)
    calls = {"plain": 0, "bounded": 0}

    def counted(path: str, unit: int, min_tokens: int, scores: np.ndarray) -> list[int]:
        calls[path] += 1
        return grow(unit, corpus, scores, min_tokens, counts, within)

    for _ in range(20):
        scores = rng.random(corpus.n_units)
        order = rng.permutation(corpus.n_units)
        min_tokens = int(rng.integers(1, 80))
        budget = int(rng.integers(1, int(counts.sum()) // 2))
        max_spans = None if rng.random() < 0.5 else int(rng.integers(1, 6))
        lead = [[int(order[-1])]] if rng.random() < 0.3 else []
        plain = lead + [
            Seed(int(u), functools.partial(counted, "plain", int(u), min_tokens, scores))
            for u in order
        ]
        bounded = lead + [
            Seed(
                int(u),
                functools.partial(counted, "bounded", int(u), min_tokens, scores),
                seed_bound(int(u), regions, min_tokens),
            )
            for u in order
        ]
        want = pack(plain, counts, budget, corpus, max_spans)
        assert pack(bounded, counts, budget, corpus, max_spans, regions=regions[0]) == want
    assert calls["bounded"] < calls["plain"]


def test_growth_stays_in_its_region(indexed: S3Retriever) -> None:
    """Grown spans never cross a document, nor a blank line when within_paragraph."""
    corpus = indexed.index.corpus
    counts = corpus.unit_token_counts()
    scores = np.random.default_rng(0).random(corpus.n_units)
    for within in (True, False):
        region = corpus.unit_regions(within)[0]
        for unit in range(corpus.n_units):
            grown = grow(unit, corpus, scores, 10_000, counts, within)
            assert set(region[grown].tolist()) == {region[unit]}
            # With room for everything, growth takes the whole region.
            assert len(grown) == int((region == region[unit]).sum())
    breaks = corpus.paragraph_breaks()
    assert breaks.any() and not breaks[0]
