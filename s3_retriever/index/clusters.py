"""Key clusters: each store's keys grouped by two-level k-means, for clustered exact attention.

Exact attention reads every stored key, so a question's cost grows with the corpus. The keys of
a field are clustered once (two-level k-means, built on first use and kept with the store); each
question row ranks the clusters by how high their logits reach (``q.mean`` plus two standard
deviations of ``q.k`` inside the cluster) and computes exact logits over the members of its best
clusters only, about ``positions_per_row`` keys, whatever the corpus size. This is the
inverted-file search of vector databases, applied per question row.

The row's softmax normaliser still covers every position. Attention in the retrieval heads is
spread over many positions, not held by a few, so the unread clusters cannot be dropped: their
share is estimated from each cluster's mean and size and the keys' pooled within-cluster
covariance ``S``, as for keys spread like a Gaussian around the mean
(``E exp(q.k) = exp(q.mean + q.S.q / 2)``). The normaliser sets how much each row weighs against
the others, so a row whose attention is diffuse is not mistaken for one that points.
Positions outside a row's clusters get none of its weight.

The search over the clusters is :mod:`s3_retriever.search.clustered`; the full computation
(:func:`s3_retriever.search.exact.exact_scores`) stays the reference. Their agreement on a real
index is measured by ``benchmarks/cluster_search.py`` and tested in
``tests/search/test_clustered.py``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from s3_retriever.errors import IndexLoadError
from s3_retriever.index.arrays import typed, write_npy
from s3_retriever.index.key_store import KeyStore

CLUSTER_ARRAYS = ("means", "variance", "spread", "cluster_of")
"""The arrays a saved index holds per key store, in :meth:`KeyClusters.from_arrays` order."""

# Lloyd iterations of the k-means; training vectors per cluster (a sample of the keys).
_ITERATIONS = 10
_SAMPLE_PER_CLUSTER = 64
# Coarse groups whose fine centres each key is compared with.
_COARSE_PROBES = 3
# Keys assigned to clusters per matmul: bounds the distance temporary at 256 MiB.
_ASSIGN_STEP = 1 << 16


def cluster_count(n_positions: int) -> int:
    """Clusters for an index of ``n_positions`` keys: about 256 keys each, at most 4,096.

    Smaller clusters let a row read just the keys it needs rather than whole large clusters;
    the cap bounds the size of the centres every question row ranks.
    """
    return int(min(4096, max(16, n_positions // 256)))


@dataclass(frozen=True)
class KeyClusters:
    """The keys of one store grouped by nearest k-means centre."""

    means: np.ndarray
    """(clusters, dim) float32 mean of each cluster's keys."""
    variance: np.ndarray
    """(clusters, dim) float32 variance of each cluster's keys, per dimension."""
    cluster_of: np.ndarray
    """(positions,) uint16 cluster of each position (there are at most 4,096)."""
    order: np.ndarray
    """(positions,) int64 positions sorted by cluster."""
    offsets: np.ndarray
    """(clusters + 1,) cluster c holds ``order[offsets[c]:offsets[c + 1]]``."""
    spread: np.ndarray
    """(dim, dim) covariance of keys around their cluster's mean, pooled over clusters."""

    @property
    def counts(self) -> np.ndarray:
        return np.diff(self.offsets)

    def arrays(self) -> dict[str, np.ndarray]:
        """What a saved index stores (the order and offsets follow from ``cluster_of``)."""
        return {name: getattr(self, name) for name in CLUSTER_ARRAYS}

    @classmethod
    def from_arrays(
        cls, arrays: Mapping[str, np.ndarray], n_positions: int, dim: int
    ) -> KeyClusters:
        """Clusters read back from :meth:`arrays`; ValueError when they do not fit the keys."""
        means, variance, spread, cluster_of = (arrays[name] for name in CLUSTER_ARRAYS)
        n_clusters = len(means)
        if (
            means.shape != (n_clusters, dim)
            or variance.shape != means.shape
            or spread.shape != (dim, dim)
            or cluster_of.shape != (n_positions,)
            or not all(a.dtype == np.float32 for a in (means, variance, spread))
            or cluster_of.dtype != np.uint16
        ):
            raise ValueError("the saved key clusters do not match the stored keys")
        if n_positions and int(cluster_of.max()) >= n_clusters:
            raise ValueError("the saved key clusters name clusters that do not exist")
        order, offsets = _grouped(cluster_of, n_clusters)
        return cls(
            means=np.asarray(means),
            variance=np.asarray(variance),
            cluster_of=cluster_of,
            order=order,
            offsets=offsets,
            spread=np.asarray(spread),
        )

    @classmethod
    def of(cls, store: KeyStore, n_clusters: int, seed: int = 0) -> KeyClusters:
        """Two-level k-means: ~sqrt(n_clusters) coarse centres, then that many fine centres
        inside each coarse group, so every key is compared with ~2 sqrt(n_clusters) centres
        instead of all of them (a million keys cluster in seconds, not minutes)."""
        n = len(store.scales)
        if n == 0:
            raise ValueError("cannot cluster an empty key store")
        generator = torch.Generator().manual_seed(seed)
        n_coarse = max(1, round(math.sqrt(n_clusters)))
        n_fine = max(1, -(-n_clusters // n_coarse))
        everyone = np.arange(n)
        coarse = _fit(store, everyone, n_coarse, generator)
        nearest_coarse = _nearest_centres(store, everyone, coarse, min(_COARSE_PROBES, n_coarse))
        by_group = np.argsort(nearest_coarse[:, 0], kind="stable")
        bounds = np.searchsorted(nearest_coarse[by_group, 0], np.arange(n_coarse + 1))
        # Fine centres are fitted on each coarse group's keys; a key then takes the nearest fine
        # centre among its few nearest coarse groups, so keys near a coarse boundary are not
        # forced into a worse fine cluster.
        best = np.full(n, np.inf, np.float32)
        cluster_of = np.zeros(n, np.int64)
        for group in range(n_coarse):
            members = by_group[bounds[group] : bounds[group + 1]]
            if not len(members):
                continue
            fine = _fit(store, members, n_fine, generator)
            near = np.flatnonzero((nearest_coarse == group).any(axis=1))
            for start in range(0, len(near), _ASSIGN_STEP):
                chunk = near[start : start + _ASSIGN_STEP]
                distance = _distances(float_keys_at(store, chunk), fine)
                closest, index = distance.min(dim=1)
                better = closest.numpy() < best[chunk]
                best[chunk[better]] = closest.numpy()[better]
                cluster_of[chunk[better]] = group * n_fine + index.numpy()[better]
        return cls._summarise(store, cluster_of, n_coarse * n_fine)

    @classmethod
    def _summarise(cls, store: KeyStore, cluster_of: np.ndarray, n_clusters: int) -> KeyClusters:
        """Means, sizes and pooled spread of the clusters that ``cluster_of`` assigns."""
        n, dim = len(cluster_of), store.head_dim
        sums = torch.zeros((n_clusters, dim), dtype=torch.float64)
        squares = torch.zeros((n_clusters, dim), dtype=torch.float64)
        second = torch.zeros((dim, dim), dtype=torch.float64)
        for start in range(0, n, _ASSIGN_STEP):
            stop = min(n, start + _ASSIGN_STEP)
            keys = torch.from_numpy(store.dequantize(start, stop)).double()
            owner = torch.from_numpy(cluster_of[start:stop])
            sums.index_add_(0, owner, keys)
            squares.index_add_(0, owner, keys.square())
            second += keys.T @ keys
        order, offsets = _grouped(cluster_of, n_clusters)
        sizes = torch.from_numpy(np.diff(offsets)).double()
        means = sums / sizes.clamp(min=1)[:, None]
        variance = (squares / sizes.clamp(min=1)[:, None] - means.square()).clamp(min=0)
        spread = (second - (means * sizes[:, None]).T @ means) / n
        return cls(
            means=means.float().numpy(),
            variance=variance.float().numpy(),
            cluster_of=cluster_of.astype(np.uint16),
            order=order,
            offsets=offsets,
            spread=spread.float().numpy(),
        )


def _grouped(cluster_of: np.ndarray, n_clusters: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions sorted by cluster, and where each cluster starts among them."""
    sizes = np.bincount(cluster_of, minlength=n_clusters)
    return np.argsort(cluster_of, kind="stable"), np.concatenate([[0], np.cumsum(sizes)])


def keys_at(store: KeyStore, positions: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and float32 scales of the keys at ``positions``."""
    # Plain ndarray views of memory-mapped stores: numpy's memmap subclass adds a large
    # per-call cost to fancy indexing.
    # np.take gathers rows 2-4x faster than fancy indexing (5 against 12 ms for 100k keys of a
    # memory-mapped 10M-token store, measured for docs/performance.md's End-to-end retrieve).
    codes = np.take(np.asarray(store.codes).view(np.ndarray), positions, axis=0)
    scales = np.take(np.asarray(store.scales).view(np.ndarray), positions).astype(np.float32)
    return torch.from_numpy(codes), torch.from_numpy(scales)


def float_keys_at(store: KeyStore, positions: np.ndarray) -> torch.Tensor:
    codes, scales = keys_at(store, positions)
    return codes.float() * scales[:, None]


def _fit(store: KeyStore, members: np.ndarray, k: int, generator: torch.Generator) -> torch.Tensor:
    """k-means centres (Lloyd) of a sample of the members' keys; empty centres stay put."""
    picked = torch.randperm(len(members), generator=generator)[: k * _SAMPLE_PER_CLUSTER]
    sample = float_keys_at(store, np.sort(members[picked.numpy()]))
    k = min(k, len(sample))
    centres = sample[torch.randperm(len(sample), generator=generator)[:k]].clone()
    for _ in range(_ITERATIONS):
        nearest = _nearest(sample, centres)
        sums = torch.zeros_like(centres).index_add_(0, nearest, sample)
        sizes = torch.bincount(nearest, minlength=k)
        filled = sizes > 0
        centres[filled] = sums[filled] / sizes[filled, None]
    return centres


def _nearest_centres(
    store: KeyStore, members: np.ndarray, centres: torch.Tensor, how_many: int
) -> np.ndarray:
    """(members, how_many) indices of the nearest centres of each member's key, nearest first."""
    out = np.empty((len(members), how_many), np.int64)
    for start in range(0, len(members), _ASSIGN_STEP):
        chunk = members[start : start + _ASSIGN_STEP]
        distance = _distances(float_keys_at(store, chunk), centres)
        out[start : start + len(chunk)] = distance.topk(how_many, largest=False).indices.numpy()
    return out


def _distances(vectors: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances (up to each vector's own norm, which ranks nothing)."""
    return centres.square().sum(1)[None, :] - 2 * vectors @ centres.T


def _nearest(vectors: torch.Tensor, centres: torch.Tensor) -> torch.Tensor:
    """Index of the nearest centre (Euclidean) of each vector."""
    return _distances(vectors, centres).argmin(dim=1)


def _cache_key(keys: KeyStore) -> tuple[str, int]:
    return ("clusters", cluster_count(len(keys.scales)))


def key_clusters(keys: KeyStore) -> KeyClusters:
    """The store's clusters, built on first use and kept until its keys change."""
    n_clusters = cluster_count(len(keys.scales))
    return keys.derived(_cache_key(keys), lambda s: KeyClusters.of(s, n_clusters))


def attach_clusters(keys: KeyStore, clusters: KeyClusters) -> None:
    """Use ``clusters`` (read back with a saved index) for this store's current keys."""
    keys.set_derived(_cache_key(keys), clusters)


def save_clusters(keys: KeyStore, stem: Path) -> None:
    """Write the store's clusters (built now if need be) as ``{stem}_{name}.npy``."""
    for name, array in key_clusters(keys).arrays().items():
        write_npy(Path(f"{stem}_{name}.npy"), array)


def read_clusters(
    keys: KeyStore, arrays: Mapping[str, np.ndarray], stem: str, n_positions: int, folder: Path
) -> None:
    """Attach saved clusters to the store, when the index has them (small indexes do not)."""
    if f"{stem}_means.npy" not in arrays:
        return
    saved = {
        name: typed(arrays, f"{stem}_{name}.npy", "iuf", "numbers", folder)
        for name in CLUSTER_ARRAYS
    }
    try:
        attach_clusters(keys, KeyClusters.from_arrays(saved, n_positions, keys.head_dim))
    except ValueError as exc:
        raise IndexLoadError(f"{folder}: {exc}; rebuild the index.") from exc
