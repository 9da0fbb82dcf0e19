"""The driver's half of a sharded search: merging the shards' rankings, then packing the budget.

Which steps of a search are global, and how each is made exact across shards:

- **Softmax over every position** (S3 scorers): a shard returns each question row's
  log-sum-exp over its candidates; :func:`combine_lse` adds them up (``logaddexp``) and every
  shard divides by the total, so its scores are its part of the corpus-wide attention.
- **BM25's idf and average length**: shards add up unit counts, lengths and document
  frequencies (:mod:`s3_retriever.distributed.lexical_stats`).
- **Smoothing, unit scores, peaks**: within a document, so within a shard.
- **The relevance floor** divides each component by its best unit over the allowed units: the
  shards score under the corpus-wide statistics, so :func:`combine_bests` takes the largest of
  their bests, and every shard applies the floor with it.
- **Rankings** (peaks, BM25 order, RRF's two input rankings): each shard sorts its units by
  ``(-score, document sequence number, place in document)``, the order one index sorts them in;
  :class:`MergedRanking` merges the shards' lists page by page.
- **Reciprocal-rank fusion** needs every unit's global rank in both rankings:
  :meth:`ReciprocalRankFusion.ranking` reads both merged rankings to a depth ``d``, asks the
  shards for the exact global ranks of the units seen (``count_before`` summed over shards) and
  emits the units whose fused score beats ``w_s/(k+1+d) + w_b/(k+1+d)``, the most any unit not
  yet seen can have; then it reads deeper.
- **Packing the budget**: :func:`pack` takes ranked spans in order, as
  :func:`s3_retriever.search.spans.pack` does, on units named
  ``(sequence number, place in document)``.
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import numpy as np

from s3_retriever.distributed.query_state import PEAK_LIMIT

Key = tuple[float, int, int]
"""A ranking key: (-score, document sequence number, place in document)."""
GlobalUnit = tuple[int, int, int, int, int]
"""(sequence number, place in document, shard, local unit, tokens): sorts in corpus order."""


def combine_lse(parts: Sequence[dict[Any, np.ndarray] | None]) -> dict[Any, np.ndarray]:
    """Corpus-wide log-sum-exp of every question row from the shards' own."""
    present = [p for p in parts if p is not None]
    if not present:
        return {}
    with np.errstate(invalid="ignore"):
        return {
            head: np.logaddexp.reduce(np.stack([p[head] for p in present]), axis=0)
            for head in present[0]
        }


def combine_bests(parts: Sequence[dict[str, float]]) -> dict[str, float]:
    """Each component's best unit score over every shard, from the shards' own bests."""
    return {name: max(p[name] for p in parts) for name in parts[0]} if parts else {}


Page = list[tuple[tuple[float, int, int, int], Any]]
"""Entries ``((-score, seq, place, local unit), payload)`` of one shard's ranking."""


class MergedRanking:
    """One ranking over every shard: a k-way merge of the shards' sorted entries.

    ``fetch({shard: (start, count)})`` returns more entries of those shards, in one round trip.
    """

    def __init__(
        self,
        first_pages: Sequence[Page],
        sizes: Sequence[int],
        fetch: Callable[[dict[int, tuple[int, int]]], dict[int, Page]],
    ) -> None:
        self._buffers = [list(page) for page in first_pages]
        self._next = [len(page) for page in first_pages]
        self._sizes = list(sizes)
        self._fetch = fetch
        self.total = sum(sizes)

    def __iter__(self) -> Iterator[tuple[int, tuple[float, int, int, int], Any]]:
        """``(shard, entry, payload)`` in global order."""
        heap: list[tuple[tuple[float, int, int, int], int, Any]] = []
        cursors = [0] * len(self._buffers)

        def refill(shard: int) -> None:
            # Every shard with less than half a page unread is topped up in the same round trip;
            # pages double, so a deep read costs few round trips.
            wanted = {}
            for other, buffer in enumerate(self._buffers):
                unread = len(buffer) - cursors[other]
                more_left = self._next[other] < self._sizes[other]
                if more_left and (other == shard or 2 * unread < max(len(buffer), 32)):
                    wanted[other] = (self._next[other], max(len(buffer), 32))
            for other, more in self._fetch(wanted).items():
                self._next[other] += len(more)
                self._buffers[other].extend(more)

        def push(shard: int) -> None:
            buffer = self._buffers[shard]
            if cursors[shard] == len(buffer) and self._next[shard] < self._sizes[shard]:
                refill(shard)
            if cursors[shard] < len(buffer):
                entry, payload = buffer[cursors[shard]]
                cursors[shard] += 1
                key = (float(entry[0]), int(entry[1]), int(entry[2]), int(entry[3]))
                heapq.heappush(heap, (key, shard, payload))

        for shard in range(len(self._buffers)):
            push(shard)
        while heap:
            entry, shard, payload = heapq.heappop(heap)
            yield shard, entry, payload
            push(shard)


class ReciprocalRankFusion:
    """RRF scores of units of several shards, from their exact global ranks in both rankings.

    ``keys_of(units)`` gives units' keys in both rankings (asked of their shards);
    ``global_ranks({name: keys})`` counts, over all shards, the candidates ranked before each
    key, for both rankings in one call. Ranks and keys are remembered for the question.
    """

    def __init__(
        self,
        weights: tuple[float, float],
        rrf_k: int,
        keys_of: Callable[[list[tuple[int, int]]], dict[tuple[int, int], tuple[Key, Key] | None]],
        global_ranks: Callable[[dict[str, list[Key]]], dict[str, np.ndarray]],
    ) -> None:
        if weights[0] < 0 or weights[1] < 0:
            raise ValueError("a sharded search needs RRF weights of at least 0")
        self.weights = weights
        self.rrf_k = rrf_k
        self._keys_of = keys_of
        self._global_ranks = global_ranks
        self.keys: dict[tuple[int, int], tuple[Key, Key] | None] = {}
        self.rank: dict[str, dict[tuple[int, int], int]] = {"s3": {}, "bm25": {}}

    def score_of(self, s3_rank: int, bm25_rank: int) -> float:
        # The float operations of s3_retriever.search.fusion.fuse: 0 + S3 term, then + BM25 term.
        w_s3, w_bm25 = self.weights
        return (0.0 + w_s3 / (self.rrf_k + 1 + s3_rank)) + w_bm25 / (self.rrf_k + 1 + bm25_rank)

    def fused(self, units: Iterable[tuple[int, int]]) -> dict[tuple[int, int], float]:
        """Fused score of each ``(shard, local unit)``; 0 for a unit in neither ranking
        (filtered out or below the relevance floor), as in one index."""
        units = list(dict.fromkeys(units))
        unknown = [u for u in units if u not in self.keys]
        if unknown:
            self.keys.update(self._keys_of(unknown))
        ranked = [u for u in units if self.keys[u] is not None]
        missing = {name: [u for u in ranked if u not in self.rank[name]] for name in ("s3", "bm25")}
        wanted = {
            name: [self._key(u)[slot] for u in missing[name]]
            for slot, name in enumerate(("s3", "bm25"))
            if missing[name]
        }
        if wanted:
            counts = self._global_ranks(wanted)
            for name in wanted:
                self.rank[name].update(zip(missing[name], counts[name].tolist(), strict=True))
        fused = dict.fromkeys(units, 0.0)
        fused.update({u: self.score_of(self.rank["s3"][u], self.rank["bm25"][u]) for u in ranked})
        return fused

    def _key(self, unit: tuple[int, int]) -> tuple[Key, Key]:
        keys = self.keys[unit]
        assert keys is not None
        return keys

    def ranking(
        self, s3: MergedRanking, bm25: MergedRanking, limit: int
    ) -> Iterator[tuple[int, int, float]]:
        """Units by descending RRF score (ties in corpus order), exactly as one index ranks
        them: ``(shard, local unit, fused score)``, at most ``limit``."""
        total = s3.total
        streams = {"s3": iter(s3), "bm25": iter(bm25)}
        done: set[tuple[int, int]] = set()
        depth, emitted = 0, 0
        while emitted < limit:
            # Deeper by 4x a step: packing a nearly full budget can read far down the ranking.
            target = min(total, max(64, 4 * depth))
            for name, stream in streams.items():
                for place in range(depth, target):
                    shard, entry, keys = next(stream)
                    self.rank[name][(shard, entry[3])] = place
                    self.keys[(shard, entry[3])] = keys
            depth = target
            pending = (set(self.rank["s3"]) | set(self.rank["bm25"])) - done
            fused = self.fused(pending)
            # A unit not read yet ranks at depth or later in both lists: it scores at most this.
            bound = self.score_of(depth, depth) if depth < total else -np.inf
            # Ties of the fused score break by corpus order, as np.lexsort does in one index.
            ordered = sorted(pending, key=lambda u: (-fused[u], *self._key(u)[0][1:]))
            for unit in ordered:
                if fused[unit] <= bound:
                    break
                done.add(unit)
                yield unit[0], unit[1], fused[unit]
                emitted += 1
                if emitted >= limit:
                    return
            if depth >= total:
                return


def pack(
    groups: Iterable[list[GlobalUnit]], budget: int, smallest: int, max_spans: int | None
) -> list[GlobalUnit]:
    """:func:`s3_retriever.search.spans.pack` over units of several shards, in corpus order.

    ``smallest`` is the token count of the corpus's smallest unit (packing stops once less is
    left). Returns the chosen units sorted in corpus order.
    """
    chosen: dict[tuple[int, int], GlobalUnit] = {}
    used = 0
    for group in groups:
        new = [u for u in group if (u[0], u[1]) not in chosen]
        cost = sum(u[4] for u in new)
        if not new or used + cost > budget:
            continue
        if max_spans is not None:
            candidate = sorted([*chosen.values(), *new])
            if len(runs(candidate)) > max_spans:
                continue
        for unit in new:
            chosen[(unit[0], unit[1])] = unit
        used += cost
        if used >= budget or budget - used < smallest:
            break
    return sorted(chosen.values())


def runs(units: Sequence[GlobalUnit]) -> list[list[GlobalUnit]]:
    """Sorted units grouped into runs of consecutive units of one document."""
    out: list[list[GlobalUnit]] = []
    for unit in units:
        last = out[-1][-1] if out else None
        if last is not None and unit[0] == last[0] and unit[1] == last[1] + 1:
            out[-1].append(unit)
        else:
            out.append([unit])
    return out


def global_units(shard: int, group: Sequence[Sequence[int]]) -> list[GlobalUnit]:
    """A shard's unit references as units of the whole corpus."""
    return [(u[0], u[1], shard, u[2], u[3]) for u in group]


def grown_groups(ranking: MergedRanking) -> Iterator[list[GlobalUnit]]:
    """Spans grown by their shards (S3-Pure, BM25), in global rank order; the first
    :data:`PEAK_LIMIT` entries count, filtered-out ones included, as in one index."""
    for _, (shard, _, grown) in zip(range(PEAK_LIMIT), ranking, strict=False):
        if grown is not None:
            yield global_units(shard, grown)
