"""One shard of a sharded index: an :class:`S3Retriever` and the search steps it runs locally.

A :class:`ShardWorker` is a plain object; :mod:`s3_retriever.distributed.retriever` runs one per
shard as a Ray actor. A search is a few calls, each answered from the shard's own documents plus
the corpus-wide statistics the driver sends (see :mod:`s3_retriever.distributed.merge`):

1. :meth:`prepare`: apply the filters; return each question row's log-sum-exp over the shard's
   candidate positions and the shard's BM25 statistics for the query's terms.
2. :meth:`score`: score with the corpus-wide normalisers and BM25 statistics (so every score is
   the one a single index over the whole corpus gives); return each component's best unit.
3. :meth:`rank`: apply the relevance floor under the corpus-wide bests, rank the shard's units,
   and return the first entries of each ranking.
4. :meth:`page`, :meth:`count_before`, :meth:`neighbourhoods`, :meth:`grow`, :meth:`hits`: more
   ranked entries, global ranks, span growth and the final spans, as the driver's packing asks.

Ties between shards break by the documents' sequence numbers (``order``), as ties in one index
break by position.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.distributed.layout import ShardEntry, load_shard, write_shard
from s3_retriever.distributed.lexical_stats import BM25Stats, UnitTerms, query_terms
from s3_retriever.distributed.query_state import (
    PEAK_LIMIT,
    Entry,
    Keys,
    Prepared,
    QueryState,
    RankedUnits,
    UnitRef,
    both_keys,
    unit_refs,
)
from s3_retriever.retriever import S3Retriever, ScannedTexts
from s3_retriever.search.filters import Filters, document_mask
from s3_retriever.search.fusion import rank_order
from s3_retriever.search.ranking import lead_tail_groups
from s3_retriever.search.relevance import component_bests, relevance_under
from s3_retriever.search.scoring import require_store
from s3_retriever.search.spans import grow, peaks, smooth, unit_scores


class ShardWorker:
    """One shard: its index, its documents' sequence numbers, and per-question search state."""

    def __init__(
        self, retriever: S3Retriever, order: Sequence[int] | np.ndarray, index: int
    ) -> None:
        self.retriever = retriever
        self.order = np.asarray(order, dtype=np.int64)
        self.index = index
        self._terms: UnitTerms | None = None
        self._queries: dict[str, QueryState] = {}
        self._staged: tuple[ScannedTexts, list[str], list[dict[str, Any]], list[int]] | None = None

    @classmethod
    def open(
        cls,
        root: str | Path,
        index: int,
        entry: Mapping[str, Any] | None,
        model_path: str | None = None,
        device: str = "cpu",
        dtype: str | None = None,
    ) -> ShardWorker:
        """Load shard ``index`` of the sharded folder ``root`` (checked against ``entry``)."""
        checked = ShardEntry(**entry) if entry is not None else None
        retriever, order = load_shard(
            Path(root), index, checked, model_path=model_path, device=device, dtype=dtype
        )
        # Every key is read: a shard's softmax normaliser must cover all its candidates.
        scoring = retriever.config.scoring
        if scoring.cluster_search_above is not None:
            retriever.config = retriever.config.replace(
                scoring=dataclasses.replace(scoring, cluster_search_above=None)
            )
        return cls(retriever, order, index)

    # ------------------------------------------------------------------ documents
    def info(self) -> dict[str, Any]:
        """Documents, positions, units and bytes held by this shard."""
        corpus = self.retriever.index.corpus
        return {
            "documents": len(corpus),
            "positions": corpus.n_positions,
            "units": corpus.n_units,
            "nbytes": self.retriever.index.nbytes(),
        }

    def doc_ids(self) -> list[str]:
        return list(self.retriever.index.corpus.doc_ids)

    def stage(
        self,
        texts: list[str],
        ids: list[str],
        metadatas: list[dict[str, Any]],
        seqs: list[int],
    ) -> int:
        """Scan documents for this shard without committing them; returns tokens scanned."""
        scanned = self.retriever.scan_texts(texts)
        self._staged = (scanned, ids, metadatas, seqs)
        return sum(len(t) for t in scanned.tokenized)

    def commit_staged(self, replaced: Sequence[str] = ()) -> None:
        """Index what :meth:`stage` scanned, after deleting the documents ``replaced`` (ids
        being added again); every shard stages first, so a failed scan on any shard leaves the
        whole index as it was."""
        if self._staged is None:
            return
        scanned, ids, metadatas, seqs = self._staged
        if replaced:
            self.delete(replaced)
        self.retriever.add_scanned(scanned, ids, metadatas)
        self.order = np.concatenate([self.order, np.asarray(seqs, np.int64)])
        self._staged = None
        self._terms = None

    def discard_staged(self) -> None:
        self._staged = None

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many this shard held."""
        rows = self.retriever.index.corpus.row_of()
        gone = {rows[i] for i in ids if i in rows}
        if not gone:
            return 0
        keep = np.ones(len(self.order), dtype=bool)
        keep[list(gone)] = False
        removed = self.retriever.delete(list(ids))
        self.order = self.order[keep]
        self._terms = None
        return removed

    def save(self, root: str | Path) -> dict[str, Any]:
        """Write this shard into the sharded folder ``root``; returns its manifest entry."""
        return asdict(write_shard(Path(root), self.index, self.retriever, self.order))

    # ------------------------------------------------------------------ search, round 1
    def prepare(
        self,
        qid: str,
        head_queries: Mapping[tuple[int, int], np.ndarray] | None,
        filters: Filters | None,
        mode: str,
        query: str,
    ) -> Prepared:
        """Filter, and return this shard's part of the corpus statistics."""
        retriever = self.retriever
        corpus = retriever.index.corpus
        doc_mask = document_mask(corpus.metadatas, corpus.doc_ids, filters)
        unit_mask = doc_mask[corpus.unit_doc] if corpus.n_units else np.zeros(0, bool)
        state = QueryState(mode, doc_mask, unit_mask)
        state.seq, state.in_doc = self._unit_keys()
        state.counts = corpus.unit_token_counts()
        row_lse = bm25 = None
        if mode in ("s3", "hybrid"):
            index = retriever.index
            require_store(retriever.config.scoring, bool(index.key_stores), bool(index.postings))
            row_lse = retriever.question_logsumexp(head_queries or {}, doc_mask)
        if mode in ("bm25", "hybrid"):
            state.terms = query_terms(query, retriever.config.lexical)
            bm25 = self._unit_terms().stats(state.terms)
        self._queries[qid] = state
        counts = corpus.unit_token_counts()
        return Prepared(
            corpus.n_units,
            bool(unit_mask.any()),
            int(counts.min()) if len(counts) else None,
            row_lse,
            bm25,
            (int(doc_mask.sum()), len(doc_mask)),
        )

    def _unit_terms(self) -> UnitTerms:
        if self._terms is None:
            corpus = self.retriever.index.corpus
            texts = [corpus.unit_text(u) for u in range(corpus.n_units)]
            self._terms = UnitTerms(texts, self.retriever.config.lexical)
        return self._terms

    # ------------------------------------------------------------------ search, round 2
    def score(
        self,
        qid: str,
        head_queries: Mapping[tuple[int, int], np.ndarray] | None,
        row_lse: Mapping[tuple[int, int], np.ndarray] | None,
        bm25: BM25Stats | None,
    ) -> dict[str, float]:
        """Score with corpus-wide statistics (so every score is the one a single index over the
        whole corpus gives); returns each component's best unit score over the units the
        filters allow, which the relevance floor divides by (search/relevance.py)."""
        state = self._queries[qid]
        retriever = self.retriever
        corpus = retriever.index.corpus
        components = state.components
        if state.mode in ("s3", "hybrid"):
            raw = retriever.score_question_vectors(
                head_queries or {}, state.doc_mask, row_lse=row_lse
            )
            smoothed = smooth(raw, corpus, retriever.config.spans.smooth_width)
            components["s3_positions"] = smoothed
            components["s3"] = unit_scores(smoothed, corpus)
        if state.mode in ("bm25", "hybrid") and bm25 is not None:
            components["bm25"] = self._unit_terms().scores(state.terms, bm25)
        return component_bests(components, state.unit_mask)

    # ------------------------------------------------------------------ search, round 3
    def rank(
        self,
        qid: str,
        bests: Mapping[str, float],
        min_relevance: float,
        min_tokens: int,
        first: int,
    ) -> dict[str, Any]:
        """Apply the relevance floor under the corpus-wide ``bests`` and rank; returns the first
        ``first`` entries of each ranking (with grown spans where growth needs no other shard),
        the number of candidates, and the lead/tail groups."""
        state = self._queries[qid]
        state.min_tokens = min_tokens
        components = state.components
        state.relevance = relevance_under(components, state.unit_mask, bests)
        # As in one index (s3_retriever/search/pipeline.py): units below the floor start no span.
        state.evidence = state.unit_mask & (state.relevance >= min_relevance)
        seq, in_doc = state.seq, state.in_doc
        if state.mode == "s3":
            smoothed = components["s3_positions"]
            corpus = self.retriever.index.corpus
            found = peaks(smoothed, corpus, self.retriever.config.spans, limit=PEAK_LIMIT)
            pos_seq, pos_in_doc = self._position_keys([p for _, p in found])
            # An entry of a filtered-out unit still counts towards the limit, as in one index.
            state.lists["s3"] = [
                (-float(smoothed[p]), int(pos_seq[i]), int(pos_in_doc[i]), u)
                for i, (u, p) in enumerate(found)
            ]
        elif state.mode == "bm25":
            scores = components["bm25"]
            ranked = rank_order(scores, state.evidence & (scores > 0))[:PEAK_LIMIT]
            state.lists["bm25"] = RankedUnits(scores, ranked, seq, in_doc)
        else:
            for name in ("s3", "bm25"):
                scores = components[name]
                ranked = rank_order(scores, state.evidence)
                state.lists[name] = RankedUnits(scores, ranked, seq, in_doc)
                state.sorted_keys[name] = (
                    -scores[ranked].astype(np.float64),
                    seq[ranked],
                    in_doc[ranked],
                )
        return {
            "lists": {name: self.page(qid, name, 0, first) for name in state.lists},
            "sizes": {name: len(entries) for name, entries in state.lists.items()},
            "lead_tail": self._lead_tail(state),
        }

    def _unit_keys(self) -> tuple[np.ndarray, np.ndarray]:
        """Each unit's document sequence number and its place within its document."""
        corpus = self.retriever.index.corpus
        if corpus.n_units == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.int64)
        first_unit = np.searchsorted(corpus.unit_doc, np.arange(len(corpus)), side="left")
        return (
            self.order[corpus.unit_doc],
            np.arange(corpus.n_units) - first_unit[corpus.unit_doc],
        )

    def _position_keys(self, positions: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
        """The document sequence number and place within the document of some positions."""
        corpus = self.retriever.index.corpus
        where = np.asarray(positions, np.int64)
        row = np.searchsorted(corpus.doc_token_start, where, side="right") - 1
        return self.order[row], where - corpus.doc_token_start[row]

    def _lead_tail(self, state: QueryState) -> list[list[UnitRef]]:
        retriever = self.retriever
        groups = lead_tail_groups(
            retriever.index.corpus, retriever.config.hybrid, state.evidence, state.counts
        )
        return [unit_refs(state, g) for g in groups]

    # ------------------------------------------------------------------ search, later rounds
    def page(self, qid: str, name: str, start: int, count: int) -> list[tuple[Entry, Any]]:
        """Entries ``start`` to ``start + count`` of ranking ``name``, each with its grown span
        where growth needs only this shard (S3-Pure and BM25 rankings), else with the unit's
        keys in both rankings (hybrid: the driver fuses them)."""
        state = self._queries[qid]
        entries = state.lists[name][start : start + count]
        if state.mode == "hybrid":
            return [(e, both_keys(state, e[3])) for e in entries]
        scores = state.components[name]
        return [(e, self._grown(state, e[3], scores)) for e in entries]

    def _grown(self, state: QueryState, unit: int, scores: np.ndarray) -> list[UnitRef] | None:
        """The span grown from ``unit``; ``None`` if the unit is filtered out or below the
        relevance floor."""
        if not state.evidence[unit]:
            return None
        corpus = self.retriever.index.corpus
        within = self.retriever.config.spans.within_paragraph
        return unit_refs(state, grow(unit, corpus, scores, state.min_tokens, state.counts, within))

    def count_before(
        self, qid: str, keys: Mapping[str, Sequence[tuple[float, int, int]]]
    ) -> dict[str, np.ndarray]:
        """For each ranking and key ``(-score, seq, place)``: how many of this shard's
        candidates rank before it. Summed over shards, a unit's global rank."""
        out: dict[str, np.ndarray] = {}
        for name, wanted in keys.items():
            neg, seq, in_doc = self._queries[qid].sorted_keys[name]
            counts = np.zeros(len(wanted), np.int64)
            for i, (key_neg, key_seq, key_in_doc) in enumerate(wanted):
                lo = int(np.searchsorted(neg, key_neg, side="left"))
                hi = int(np.searchsorted(neg, key_neg, side="right"))
                before = seq[lo:hi] < key_seq
                tied = before | ((seq[lo:hi] == key_seq) & (in_doc[lo:hi] < key_in_doc))
                counts[i] = lo + int(tied.sum())
            out[name] = counts
        return out

    def rank_keys(self, qid: str, units: Sequence[int]) -> list[Keys | None]:
        """Each unit's key in every ranking of the question (S3 first, then BM25)."""
        state = self._queries[qid]
        return [both_keys(state, u) for u in units]

    def neighbourhoods(
        self, qid: str, units: Sequence[int]
    ) -> tuple[list[list[int]], dict[int, Keys | None]]:
        """Units that growing each of ``units`` may look at (its document's units within
        ``min_tokens`` tokens of it), and their keys in both rankings. The driver computes
        their fused scores for :meth:`grow`."""
        corpus = self.retriever.index.corpus
        state = self._queries[qid]
        counts, budget = state.counts, state.min_tokens
        out = []
        for unit in units:
            doc = corpus.unit_doc[unit]
            near = [unit]
            for step in (-1, 1):
                u, size = unit + step, int(counts[unit])
                while 0 <= u < corpus.n_units and corpus.unit_doc[u] == doc and size < budget:
                    near.append(u)
                    size += int(counts[u])
                    u += step
            out.append(sorted(near))
        keys = {u: both_keys(state, u) for near in out for u in near}
        return out, keys

    def grow(
        self, qid: str, units: Sequence[int], scores: Mapping[int, float]
    ) -> list[list[UnitRef]]:
        """Spans grown from ``units`` by the given (fused) scores of their neighbourhoods
        (units below the relevance floor fuse to 0, as in one index)."""
        state = self._queries[qid]
        dense = np.full(self.retriever.index.corpus.n_units, -np.inf, np.float64)
        for unit, value in scores.items():
            dense[unit] = value
        return [self._grown(state, u, dense) or [] for u in units]

    def hits(
        self, qid: str, runs: Sequence[Sequence[int]], ranked: Sequence[float] | None
    ) -> list[dict[str, Any]]:
        """The spans of ``runs`` (consecutive units of one document each) as Hit fields.

        ``ranked``: each run's ranking score when the driver computed it (hybrid); otherwise the
        highest score of the run's units in this mode's ranking."""
        state = self._queries[qid]
        corpus = self.retriever.index.corpus
        out = []
        for i, run in enumerate(runs):
            row = int(corpus.unit_doc[run[0]])
            start = int(corpus.unit_chars[run[0], 0])
            end = int(corpus.unit_chars[run[-1], 1])
            parts = {
                name: float(values[list(run)].max())
                for name, values in state.components.items()
                if name in ("s3", "bm25")
            }
            score = ranked[i] if ranked is not None else parts[state.mode]
            out.append(
                {
                    "doc_id": corpus.doc_ids[row],
                    "start_char": start,
                    "end_char": end,
                    "text": corpus.texts[row][start:end],
                    "score": float(score),
                    "metadata": dict(corpus.metadatas[row]),
                    "scores": parts,
                    "relevance": float(state.relevance[list(run)].max()),
                }
            )
        return out

    def finish(self, qid: str) -> None:
        """Forget a question's state."""
        self._queries.pop(qid, None)
