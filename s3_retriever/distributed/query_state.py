"""What a shard keeps of one question between the driver's calls, and the records it returns.

Units and positions are named across shards by ``(document sequence number, place in the
document)``; see :mod:`s3_retriever.distributed.shard`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np

from s3_retriever.distributed.lexical_stats import BM25Stats

PEAK_LIMIT = 4096
"""Ranked units a search considers, as in :mod:`s3_retriever.search.ranking`."""

Entry = tuple[float, int, int, int]
"""A ranked entry: (-score, document sequence number, place in the document, local unit)."""
UnitRef = tuple[int, int, int, int]
"""A unit as the driver packs it: (sequence number, unit within document, local unit, tokens)."""


class RankedUnits:
    """Units in rank order, turned into entries only for the slices the driver reads (a
    hybrid ranking holds every candidate unit of the shard)."""

    def __init__(
        self, scores: np.ndarray, ranked: np.ndarray, seq: np.ndarray, in_doc: np.ndarray
    ) -> None:
        self.scores, self.ranked, self.seq, self.in_doc = scores, ranked, seq, in_doc

    def __len__(self) -> int:
        return len(self.ranked)

    def __getitem__(self, part: slice) -> list[Entry]:
        return [
            (-float(self.scores[u]), int(self.seq[u]), int(self.in_doc[u]), int(u))
            for u in self.ranked[part].tolist()
        ]


@dataclass
class QueryState:
    """What a shard keeps of one question between the driver's calls."""

    mode: str
    doc_mask: np.ndarray
    unit_mask: np.ndarray
    terms: list[str] = field(default_factory=list)
    components: dict[str, np.ndarray] = field(default_factory=dict)
    lists: dict[str, list[Entry] | RankedUnits] = field(default_factory=dict)
    sorted_keys: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=dict)
    min_tokens: int = 0
    seq: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Each unit's document sequence number."""
    in_doc: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Each unit's place within its document."""
    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    """Each unit's tokens."""
    relevance: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))
    """Each unit's relevance under the corpus-wide component bests."""
    evidence: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    """Units the filters allow whose relevance reaches the floor: the only ones ranked."""


@dataclass(frozen=True)
class Prepared:
    """A shard's answer to :meth:`ShardWorker.prepare`."""

    n_units: int
    any_candidate: bool
    smallest_unit: int | None
    row_lse: dict[tuple[int, int], np.ndarray] | None
    bm25: BM25Stats | None
    documents: tuple[int, int]
    """Documents the filters pass, documents held."""


def unit_refs(state: QueryState, units: Sequence[int]) -> list[UnitRef]:
    return [(int(state.seq[u]), int(state.in_doc[u]), int(u), int(state.counts[u])) for u in units]


Keys = tuple[tuple[float, int, int], ...]
"""A unit's key in the S3 ranking, then in the BM25 ranking."""


def both_keys(state: QueryState, unit: int) -> Keys | None:
    """The unit's key in the S3 ranking, then in the BM25 ranking; ``None`` for a unit that is
    in neither (filtered out or below the relevance floor: its fused score is 0)."""
    if not state.evidence[unit]:
        return None
    seq, place = int(state.seq[unit]), int(state.in_doc[unit])
    return tuple((-float(state.components[n][unit]), seq, place) for n in ("s3", "bm25"))
