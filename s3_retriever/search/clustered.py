"""Clustered exact attention: each question row reads only the keys of its nearest clusters.

The clusters themselves (two-level k-means over a store's keys, built once and kept with the
store) are :mod:`s3_retriever.index.clusters`; its docstring explains how the unread clusters'
share of the softmax normaliser is estimated. This module is the search over them.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
import torch

from s3_retriever.index.clusters import KeyClusters, key_clusters, keys_at
from s3_retriever.index.key_store import KeyStore
from s3_retriever.search.coverage import scatter_unit_max
from s3_retriever.search.int8_dot import QuestionCodes, int8_logits

# Standard deviations of a cluster's logits added to its mean logit when clusters are ranked.
# On the 100k-token benchmark index, reading 4,096 keys per row, agreement with the full search
# was 0.878 / 0.892 / 0.915 / 0.905 / 0.893 for 0 / 1 / 2 / 3 / 4 (python -m
# benchmarks.cluster_search, editing this value; measured before span growth stopped at
# paragraph ends, which raised the default's agreement to 0.972).
_RANK_SPREAD = 2.0


def clustered_exact_scores(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
    groups: Sequence[int] | None = None,
    positions_per_row: int = 4096,
) -> np.ndarray:
    """Mean attention of (n_q, d) question vectors, each row reading its nearest clusters only.

    Same arguments and result as :func:`s3_retriever.search.exact.exact_scores` (``groups``
    splits the rows into query heads whose mean attentions are summed).
    """
    out = np.zeros(n_positions, np.float32)
    positions, mass = clustered_exact_mass(
        queries, keys, n_positions, allowed, temperature, groups, positions_per_row
    )
    out[positions] = mass
    return out


def clustered_exact_mass(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
    groups: Sequence[int] | None = None,
    positions_per_row: int = 4096,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`clustered_exact_scores` as (positions read, their scores): every other position
    scores zero, so what follows the search can skip them (:mod:`.sparse`). Positions are
    unique, in cluster order."""
    read = clustered_row_attention(
        queries, keys, n_positions, allowed, temperature, positions_per_row
    )
    if read is None:
        return np.zeros(0, np.int64), np.zeros(0, np.float32)
    positions, columns, attention = read
    group_sizes = list(groups) if groups is not None else [queries.shape[0]]
    row_weight = torch.from_numpy(
        np.concatenate([np.full(g, 1.0 / g, np.float32) for g in group_sizes])
    )
    mass = torch.zeros(len(positions), dtype=torch.float32)
    mass.index_add_(0, columns.ravel(), (attention * row_weight[:, None]).ravel())
    return positions, mass.numpy()


def clustered_row_unit_max(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    units_of: Callable[[np.ndarray], np.ndarray],
    n_units: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
    positions_per_row: int = 4096,
) -> torch.Tensor:
    """(rows, n_units): each row's highest attention inside each unit over the keys it read
    (coverage pooling, :mod:`.coverage`); ``units_of`` maps positions to their units."""
    read = clustered_row_attention(
        queries, keys, n_positions, allowed, temperature, positions_per_row
    )
    if read is None:
        return torch.zeros((queries.shape[0], n_units), dtype=torch.float32)
    positions, columns, attention = read
    units = torch.from_numpy(units_of(positions))[columns]
    return scatter_unit_max(attention, units, n_units)


def clustered_row_attention(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    allowed: np.ndarray | None,
    temperature: float,
    positions_per_row: int,
) -> tuple[np.ndarray, torch.Tensor, torch.Tensor] | None:
    """Each row's attention over the keys of its nearest clusters: (positions read, (rows,
    width) columns into them, (rows, width) attention, 0 on padding); None when nothing is read.
    """
    n_rows = queries.shape[0]
    if n_rows == 0 or n_positions == 0:
        return None
    clusters = key_clusters(keys)
    counts = clusters.counts
    if allowed is not None:
        counts = np.bincount(
            clusters.cluster_of[allowed[:n_positions]], minlength=len(counts)
        ).astype(np.int64)
    live = counts > 0
    if not live.any():
        return None
    scale = 1.0 / (math.sqrt(queries.shape[1]) * temperature)
    q = torch.from_numpy(np.ascontiguousarray(queries, dtype=np.float32) * np.float32(scale))
    centre_logits = q @ torch.from_numpy(clusters.means).T  # (rows, clusters)
    centre_logits[:, torch.from_numpy(~live)] = -math.inf
    # Clusters rank by how high their keys' logits reach, not only by their mean's: a wide
    # cluster along q holds higher logits than a tight one with the same mean.
    reach = (q.square() @ torch.from_numpy(clusters.variance).T).sqrt()
    chosen = _clusters_to_read(centre_logits + _RANK_SPREAD * reach, counts, positions_per_row)
    # The keys of every row's clusters are read once and multiplied by all rows in one int8
    # matmul (rows of a question mostly pick the same clusters); each row then keeps its own
    # columns, so the rest costs rows x positions_per_row, not rows x the union.
    chosen_np = chosen.numpy()
    union = np.flatnonzero(chosen_np.any(axis=0))
    parts = [_members(clusters, int(c), allowed) for c in union]
    positions = np.concatenate(parts) if parts else np.zeros(0, np.int64)
    # Cluster c's keys sit at columns [first[c], first[c] + size[c]) of the union.
    size = np.zeros(len(counts), np.int64)
    size[union] = [len(part) for part in parts]
    first = np.zeros(len(counts), np.int64)
    first[union] = np.cumsum(size[union]) - size[union]
    rows_columns = [_column_ranges(first[own], size[own]) for own in map(np.flatnonzero, chosen_np)]
    width = max(len(c) for c in rows_columns)
    columns = np.zeros((n_rows, width), np.int64)
    present = np.zeros((n_rows, width), bool)
    for row, own_columns in enumerate(rows_columns):
        columns[row, : len(own_columns)] = own_columns
        present[row, : len(own_columns)] = True
    columns_t = torch.from_numpy(columns)
    questions = QuestionCodes.of(q.numpy())
    key_codes, key_scales = keys_at(keys, positions)
    key_factor = key_scales * torch.tensor(questions.step, dtype=torch.float32)
    logits = int8_logits(key_codes, key_factor, questions, columns_t)  # (rows, width)
    logits.masked_fill_(~torch.from_numpy(present), -math.inf)
    # The unread clusters' share of the normaliser: log(size) + q.mean + q.S.q / 2.
    curvature = 0.5 * ((q @ torch.from_numpy(clusters.spread)) * q).sum(dim=1)
    unread = centre_logits + torch.from_numpy(np.log(np.maximum(counts, 1)).astype(np.float32))
    unread.masked_fill_(chosen, -math.inf)
    log_norm = torch.logaddexp(
        torch.logsumexp(logits, dim=1), torch.logsumexp(unread, dim=1) + curvature
    )
    return positions, columns_t, torch.exp(logits - log_norm[:, None])


def _clusters_to_read(
    centre_logits: torch.Tensor, counts: np.ndarray, positions_per_row: int
) -> torch.Tensor:
    """(rows, clusters) mask: each row's best clusters by ``centre_logits`` (the rank score the
    caller computed) until they hold at least ``positions_per_row`` keys (live clusters only:
    dead ones rank last with -inf)."""
    # Rows need a few dozen clusters; sorting all of them (thousands) would cost more than the
    # search. Take a generous top and sort everything only if some row needs more.
    typical = max(1, int(np.median(counts[counts > 0])))
    depth = min(centre_logits.shape[1], 4 * positions_per_row // typical + 16)
    ranked = torch.topk(centre_logits, depth, dim=1).indices
    held = torch.from_numpy(counts)[ranked].cumsum(dim=1)
    if depth < centre_logits.shape[1] and bool((held[:, -1] < positions_per_row).any()):
        ranked = torch.argsort(centre_logits, dim=1, descending=True)
        held = torch.from_numpy(counts)[ranked].cumsum(dim=1)
    # A cluster is read when the clusters ranked above it hold fewer than positions_per_row.
    before = held - torch.from_numpy(counts)[ranked]
    take = (before < positions_per_row) & torch.isfinite(torch.gather(centre_logits, 1, ranked))
    chosen = torch.zeros(centre_logits.shape, dtype=torch.bool)
    chosen.scatter_(1, ranked, take)
    return chosen


def _members(clusters: KeyClusters, cluster: int, allowed: np.ndarray | None) -> np.ndarray:
    """Positions of one cluster (inside the filter, when there is one)."""
    positions = clusters.order[clusters.offsets[cluster] : clusters.offsets[cluster + 1]]
    return positions if allowed is None else positions[allowed[positions]]


def _column_ranges(starts: np.ndarray, sizes: np.ndarray) -> np.ndarray:
    """The concatenation of ``range(start, start + size)`` for each pair."""
    offsets = np.cumsum(sizes) - sizes
    return np.repeat(starts - offsets, sizes) + np.arange(int(sizes.sum()))
