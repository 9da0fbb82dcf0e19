"""BM25 over a sharded corpus, from statistics the shards add up.

One index's BM25 (:class:`s3_retriever.index.bm25.BM25Index`, bm25s's Lucene variant) scores a
unit ``d`` for query terms ``t`` (repeats counted) as::

    sum_t idf(t) * tf / (k1 * (1 - b + b * len(d) / avgdl) + tf)
    idf(t) = log(1 + (N - df(t) + 0.5) / (df(t) + 0.5))

``N``, ``df`` and ``avgdl`` are over every unit of the corpus, so a shard scoring with its own
would rank differently from one index. Each shard reports its unit count, total length and the
document frequencies of the query's terms (:meth:`UnitTerms.stats`); their sum is the corpus's
(:meth:`BM25Stats.combine`), and every shard scores with it (:meth:`UnitTerms.scores`). The
arithmetic follows bm25s step by step (float32 idf, float64 term weight, float32 sums in query
order), so the scores equal one index's; tests/distributed/test_lexical_stats.py checks it.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from s3_retriever.index.bm25 import LexicalConfig


@dataclass(frozen=True)
class BM25Stats:
    """The corpus statistics BM25 needs for one query."""

    n_units: int
    """BM25 documents (retrieval units)."""
    total_length: int
    """Terms over all units (after stop words are dropped)."""
    doc_freq: dict[str, int] = field(default_factory=dict)
    """Units holding each query term."""

    @staticmethod
    def combine(parts: Sequence[BM25Stats]) -> BM25Stats:
        """The statistics of the union of disjoint corpora."""
        doc_freq: Counter[str] = Counter()
        for part in parts:
            doc_freq.update(part.doc_freq)
        return BM25Stats(
            sum(p.n_units for p in parts), sum(p.total_length for p in parts), dict(doc_freq)
        )


def query_terms(query: str, config: LexicalConfig) -> list[str]:
    """The query's BM25 terms, repeats kept (bm25s counts a repeated term twice)."""
    import bm25s

    return list(
        bm25s.tokenize(
            [query], stopwords=config.stopwords or None, return_ids=False, show_progress=False
        )[0]
    )


class UnitTerms:
    """Each unit's BM25 terms as postings: term -> (units holding it, term frequency there)."""

    def __init__(self, unit_texts: Sequence[str], config: LexicalConfig) -> None:
        self.config = config
        self.n_units = len(unit_texts)
        self.lengths = np.zeros(self.n_units, np.int64)
        self.postings: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        if not unit_texts:
            return
        import bm25s

        tokens = bm25s.tokenize(
            list(unit_texts),
            stopwords=config.stopwords or None,
            return_ids=False,
            show_progress=False,
        )
        units: dict[str, list[int]] = {}
        freqs: dict[str, list[int]] = {}
        for unit, terms in enumerate(tokens):
            self.lengths[unit] = len(terms)
            for term, count in Counter(terms).items():
                units.setdefault(term, []).append(unit)
                freqs.setdefault(term, []).append(count)
        self.postings = {
            term: (np.asarray(units[term], np.int64), np.asarray(freqs[term], np.float32))
            for term in units
        }

    def stats(self, terms: Sequence[str]) -> BM25Stats:
        """This shard's part of the statistics for a query with ``terms``."""
        doc_freq = {t: len(self.postings[t][0]) for t in set(terms) if t in self.postings}
        return BM25Stats(self.n_units, int(self.lengths.sum()), doc_freq)

    def scores(self, terms: Sequence[str], corpus: BM25Stats) -> np.ndarray:
        """BM25 score of every unit of this shard, with the whole corpus's statistics."""
        out = np.zeros(self.n_units, np.float32)
        if corpus.n_units == 0 or corpus.total_length == 0:
            return out
        k1, b = self.config.k1, self.config.b
        avgdl = np.float64(corpus.total_length) / np.float64(corpus.n_units)
        for term in terms:
            if term not in self.postings:
                continue
            df = corpus.doc_freq[term]
            idf = np.float32(math.log(1 + (corpus.n_units - df + 0.5) / (df + 0.5)))
            units, tf = self.postings[term]
            length = self.lengths[units]
            tfc = tf / (k1 * ((1 - b) + b * length / avgdl) + tf)
            np.add.at(out, units, (np.float64(idf) * tfc).astype(np.float32))
        return out
