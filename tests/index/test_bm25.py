"""The incremental BM25 index against bm25s rebuilt from scratch and against rank_bm25.

The reference is what the index did before it became incremental: one ``bm25s.BM25`` built over
every unit text after each change.
"""

from __future__ import annotations

import random

import numpy as np
import pytest

from s3_retriever.index.bm25 import BM25Index, LexicalConfig

WORDS = [
    *("light", "energy", "storm", "wheat", "harvest", "valley", "river", "the", "a", "of"),
    *("chlorophyll", "absorbs", "plant", "rain", "meeting", "budget", "project", "report"),
    *("design", "team", "week", "market", "price", "42", "x"),
]


def _bm25s_rebuilt(texts: list[str], query: str, config: LexicalConfig) -> np.ndarray:
    """bm25s built over ``texts`` from scratch (zeros where it has no vocabulary)."""
    import bm25s

    stopwords = config.stopwords or None
    tokens = bm25s.tokenize(texts, stopwords=stopwords, show_progress=False)
    terms = bm25s.tokenize([query], stopwords=stopwords, return_ids=False, show_progress=False)[0]
    if not tokens.vocab or not terms:
        return np.zeros(len(texts), np.float32)
    model = bm25s.BM25(k1=config.k1, b=config.b)
    model.index(tokens, show_progress=False)
    return np.asarray(model.get_scores(terms), np.float32)


def _text(rng: random.Random) -> str:
    # Some units are empty or hold only stop words or one-letter tokens (no BM25 term).
    n = rng.choice([0, 1, 2, 5, 9, 14])
    return " ".join(rng.choice(WORDS) for _ in range(n))


QUERIES = (
    "light energy",
    "harvest harvest in the valley",  # a repeated term counts twice in bm25s
    "unknown words only",
    "the of a",  # stop words only
    "budget report for the design team, week 42",
)


@pytest.mark.parametrize("seed", range(6))
def test_incremental_adds_and_deletes_match_bm25s_rebuilt(seed: int) -> None:
    rng = random.Random(seed)
    config = LexicalConfig(k1=rng.choice([1.2, 1.5]), b=rng.choice([0.5, 0.75]))
    index = BM25Index(config)
    texts: list[str] = []
    for step in range(12):
        if texts and step % 4 == 3:
            keep = np.array([rng.random() > 0.3 for _ in texts])
            index.keep(keep)
            texts = [t for t, k in zip(texts, keep, strict=True) if k]
        else:
            new = [_text(rng) for _ in range(rng.randint(1, 30))]
            index.add(new)
            texts += new
        assert index.n_units == len(texts)
        for query in QUERIES:
            expected = _bm25s_rebuilt(texts, query, config)
            got = index.scores(query)
            # Same arithmetic as bm25s in the same order: equal to float32 rounding.
            np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)
            order = np.argsort(-got, kind="stable")
            assert np.array_equal(order, np.argsort(-expected, kind="stable"))


def test_segments_stay_logarithmic_and_build_equals_adds() -> None:
    rng = random.Random(7)
    texts = [_text(rng) for _ in range(2000)]
    one_by_one = BM25Index()
    for start in range(0, len(texts), 10):
        one_by_one.add(texts[start : start + 10])
    assert one_by_one.n_segments <= 2 * int(np.log2(len(texts))) + 1
    whole = BM25Index()
    whole.build(texts)
    for query in QUERIES:
        np.testing.assert_array_equal(one_by_one.scores(query), whole.scores(query))


def test_scores_match_rank_bm25_okapi_ranking() -> None:
    """rank_bm25's Okapi BM25 has a (k1 + 1) numerator factor and a floored idf, so its scores
    differ by a per-term factor; with one query term the ranking must be the same."""
    rank_bm25 = pytest.importorskip("rank_bm25")
    rng = random.Random(3)
    texts = [" ".join(rng.choice(WORDS[:12]) for _ in range(rng.randint(3, 12))) for _ in range(80)]
    index = BM25Index(LexicalConfig(stopwords=""))
    index.add(texts[:40])
    index.add(texts[40:])
    import bm25s

    tokens = bm25s.tokenize(texts, stopwords=None, return_ids=False, show_progress=False)
    okapi = rank_bm25.BM25Okapi(tokens, k1=1.5, b=0.75, epsilon=0.25)
    for term in ("storm", "valley", "chlorophyll"):
        ours = index.scores(term)
        theirs = np.asarray(okapi.get_scores([term]))
        present = ours > 0
        assert np.array_equal(present, theirs != 0)
        # Same df for every scored unit, so the ratio is the constant (k1 + 1) idf ratio.
        ratio = theirs[present] / ours[present]
        np.testing.assert_allclose(ratio, ratio[0], rtol=1e-5)


def test_stale_index_builds_once_on_first_query() -> None:
    index = BM25Index()
    index.add(["storm over the valley"])
    index.invalidate()
    calls: list[int] = []

    def texts() -> list[str]:
        calls.append(1)
        return ["storm over the valley", "wheat harvest"]

    index.ensure(texts)
    index.ensure(texts)
    assert calls == [1] and index.n_units == 2
    expected = _bm25s_rebuilt(["storm over the valley", "wheat harvest"], "wheat", index.config)
    np.testing.assert_allclose(index.scores("wheat"), expected)


def test_threads_querying_a_stale_index_all_see_it_built() -> None:
    """A loaded index builds on its first query; readers arriving meanwhile wait for the build
    instead of scoring a half-built index."""
    import threading

    rng = random.Random(11)
    texts = [_text(rng) for _ in range(3000)]
    index = BM25Index()
    index.invalidate()
    expected = _bm25s_rebuilt(texts, "budget report", index.config)
    results: list[np.ndarray] = []
    start = threading.Barrier(4)

    def reader() -> None:
        start.wait()
        index.ensure(lambda: texts)
        results.append(index.scores("budget report"))

    threads = [threading.Thread(target=reader) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert len(results) == 4
    for got in results:
        np.testing.assert_allclose(got, expected, rtol=2e-6, atol=1e-7)
