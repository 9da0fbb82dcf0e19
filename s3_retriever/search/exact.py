"""The ``exact`` scorer's kernels: attention of question vectors over the stored int8 keys.

The logits are turned into an attention distribution per question token (softmax over every
candidate position) and averaged over question tokens, not used as raw logits, which an earlier
study found far worse (docs/method.md, step 3).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from s3_retriever.index.key_store import KeyStore
from s3_retriever.search.coverage import scatter_unit_max
from s3_retriever.search.int8_dot import QuestionCodes, int8_logits

# Positions per block when streaming the exact scorer's softmax: bounds memory at
# block x question tokens x 4 bytes whatever the corpus size.
_BLOCK = 1 << 18
# Float logits the fast exact path holds at once (elements): 256 MiB.
_LOGIT_BUDGET = 1 << 26


def exact_scores_reference(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Mean attention of (n_q, d) question vectors over the stored keys, streamed in blocks.

    The straightforward float32 computation, kept as the reference that :func:`exact_scores`
    (the fast path used for search) is tested against.
    """
    scale = 1.0 / (math.sqrt(queries.shape[1]) * temperature)
    q = queries.astype(np.float32) * scale
    candidates = None if allowed is None else np.flatnonzero(allowed)
    n_candidates = n_positions if candidates is None else len(candidates)
    out = np.zeros(n_positions, np.float32)
    if n_candidates == 0:
        return out
    # Pass 1: per-row running max and normaliser (log-sum-exp), block by block.
    row_max = np.full(q.shape[0], -np.inf, np.float32)
    row_sum = np.zeros(q.shape[0], np.float64)
    for start in range(0, n_candidates, _BLOCK):
        logits = q @ _block_keys(keys, candidates, start, min(n_candidates, start + _BLOCK)).T
        new_max = np.maximum(row_max, logits.max(axis=1))
        row_sum = row_sum * np.exp(row_max - new_max) + np.exp(logits - new_max[:, None]).sum(
            axis=1
        )
        row_max = new_max
    # Pass 2: the normalised attention, averaged over question tokens.
    for start in range(0, n_candidates, _BLOCK):
        stop = min(n_candidates, start + _BLOCK)
        logits = q @ _block_keys(keys, candidates, start, stop).T
        mass = (np.exp(logits - row_max[:, None]) / row_sum[:, None]).mean(axis=0)
        if candidates is None:
            out[start:stop] = mass
        else:
            out[candidates[start:stop]] = mass
    return out


def exact_scores(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
    groups: Sequence[int] | None = None,
    row_lse: np.ndarray | None = None,
) -> np.ndarray:
    """Mean attention of (n_q, d) question vectors over the stored keys: the search fast path.

    The int8 keys are multiplied as they are stored, by int8 question vectors (absmax per row),
    with integer accumulation; the two scales are applied to the int32 logits. This avoids
    dequantising every key, which dominated the float path (docs/performance.md: the two paths
    agree within a tolerance measured there and tested in tests/test_scoring.py).

    ``groups`` splits the rows into consecutive groups (query heads that read this key field):
    the keys are read once for all of them and the result is the sum over groups of each
    group's mean attention. With ``allowed``, only those positions take part (and are computed
    at all): a filter to a few documents costs what those documents cost, not the whole index.

    ``row_lse`` replaces each row's softmax normaliser by a given log-sum-exp: a sharded index
    passes the one over every shard's positions (:func:`exact_row_logsumexp` gives each shard's
    part), so a shard's attention is exactly its share of the attention over the whole corpus.
    """
    n_rows = queries.shape[0]
    group_sizes = list(groups) if groups is not None else [n_rows]
    out = np.zeros(n_positions, np.float32)
    candidates = None if allowed is None else np.flatnonzero(allowed)
    n_candidates = n_positions if candidates is None else len(candidates)
    if n_candidates == 0 or n_rows == 0:
        return out
    row_weight = np.concatenate([np.full(g, 1.0 / g, np.float32) for g in group_sizes])
    total = torch.zeros(n_candidates, dtype=torch.float32)
    for lo, hi, logits in _exact_logits(queries, keys, n_positions, candidates, temperature):
        if row_lse is None:
            weights = torch.softmax(logits, dim=1)
        else:
            norm = torch.from_numpy(np.asarray(row_lse[lo:hi], np.float32))
            weights = torch.exp(logits - norm[:, None])
        total += torch.from_numpy(row_weight[lo:hi]) @ weights
    mass = total.numpy()
    if candidates is None:
        out[:] = mass
    else:
        out[candidates] = mass
    return out


def exact_row_unit_max(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    candidate_units: np.ndarray,
    n_units: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
) -> torch.Tensor:
    """(rows, n_units): each question row's highest attention inside each unit, the softmax
    running over every candidate position (coverage pooling, :mod:`.coverage`).

    ``candidate_units`` is the unit of each candidate position (-1: none).
    """
    out = torch.zeros((queries.shape[0], n_units), dtype=torch.float32)
    candidates = None if allowed is None else np.flatnonzero(allowed)
    n_candidates = n_positions if candidates is None else len(candidates)
    if n_candidates == 0 or queries.shape[0] == 0:
        return out
    units = torch.from_numpy(np.ascontiguousarray(candidate_units, dtype=np.int64))
    for lo, hi, logits in _exact_logits(queries, keys, n_positions, candidates, temperature):
        out[lo:hi] = scatter_unit_max(torch.softmax(logits, dim=1), units, n_units)
    return out


def exact_row_logsumexp(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """Each question row's softmax normaliser over the candidate positions, as a log-sum-exp.

    The statistic a sharded search combines across shards (``logaddexp`` of the shards' values)
    before each shard calls :func:`exact_scores` with it; ``-inf`` where no position is a
    candidate.
    """
    out = np.full(queries.shape[0], -np.inf, np.float64)
    candidates = None if allowed is None else np.flatnonzero(allowed)
    n_candidates = n_positions if candidates is None else len(candidates)
    if n_candidates == 0:
        return out
    for lo, hi, logits in _exact_logits(queries, keys, n_positions, candidates, temperature):
        out[lo:hi] = torch.logsumexp(logits, dim=1).double().numpy()
    return out


def _exact_logits(
    queries: np.ndarray,
    keys: KeyStore,
    n_positions: int,
    candidates: np.ndarray | None,
    temperature: float,
) -> Iterator[tuple[int, int, torch.Tensor]]:
    """Scaled logits of a few question rows at a time over every candidate: ``(lo, hi, logits)``.

    The int8 keys are multiplied as stored by int8 question vectors (see :func:`exact_scores`).
    """
    n_rows = queries.shape[0]
    n_candidates = n_positions if candidates is None else len(candidates)
    scale = 1.0 / (math.sqrt(queries.shape[1]) * temperature)
    questions = QuestionCodes.of(queries)
    codes, key_scales = _candidate_keys(keys, candidates, n_positions)
    # One float multiply per logit: the question's step and the softmax scale ride on the keys'.
    key_factor = key_scales * torch.tensor(questions.step * scale, dtype=torch.float32)
    # Rows are independent softmaxes, so memory stays bounded by computing a few rows over all
    # candidates at a time.
    rows_per_pass = max(1, _LOGIT_BUDGET // max(n_candidates, 1))
    for lo in range(0, n_rows, rows_per_pass):
        hi = min(n_rows, lo + rows_per_pass)
        part = questions.select(lo, hi)
        # Row-major (question rows x positions), so the softmax runs over contiguous memory.
        logits = torch.empty((hi - lo, n_candidates), dtype=torch.float32)
        for start in range(0, n_candidates, _BLOCK):
            stop = min(n_candidates, start + _BLOCK)
            logits[:, start:stop] = int8_logits(codes[start:stop], key_factor[start:stop], part)
        yield lo, hi, logits


def _candidate_keys(
    keys: KeyStore, candidates: np.ndarray | None, n_positions: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and float32 scales of the candidate positions, as torch tensors (no copy
    when every position is a candidate; memory-mapped stores stay mapped)."""
    codes = np.asarray(keys.codes[:n_positions])
    scales = np.asarray(keys.scales[:n_positions], dtype=np.float32)
    if candidates is not None:
        codes, scales = codes[candidates], scales[candidates]
    with warnings.catch_warnings():
        # Read-only (memory-mapped) arrays: torch warns because it could write; it never does.
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(codes), torch.from_numpy(scales)


def _block_keys(keys: KeyStore, candidates: np.ndarray | None, start: int, stop: int) -> np.ndarray:
    """Dequantised keys of candidate slots [start, stop) (all positions when no candidates)."""
    if candidates is None:
        return keys.dequantize(start, stop)
    rows = candidates[start:stop]
    return keys.codes[rows].astype(np.float32) * keys.scales[rows, None]
