"""The scorers that read SAE postings instead of stored keys.

- ``aligned``: attention through the SAE. With ``k ~ sum_j a_j d_j + b_dec`` the logit is
  ``q.k ~ sum_j a_j(t) (q.d_j) + q.b_dec``; the question picks the atoms with the largest
  ``q.d_j`` and sums ``a_j(t) (q.d_j)`` over their postings. ``q.b_dec`` is the same for every
  position and cancels in the softmax.
- ``coactivation``: the S3 paper's scoring (S3 eq. 4): question and key feature ids must match,
  weighted by the question activation and ``idf(f) = 1 / (log(1 + df(f)) + 1)``.
"""

from __future__ import annotations

import math

import numpy as np
import torch

from s3_retriever.index.postings import Postings
from s3_retriever.sae.bundle import TopKSAE
from s3_retriever.sae.pursuit import code_vectors


def aligned_scores(
    queries: np.ndarray,
    sae: TopKSAE,
    postings: Postings,
    n_positions: int,
    atoms_per_query: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
    row_lse: np.ndarray | None = None,
) -> np.ndarray:
    """Attention through the SAE: each question token keeps its top atoms by ``q.d_j``.

    The logit of position t for question row r is ``sum_i a_i(t) w_r[j_i(t)]`` over t's postings,
    with ``w_r`` zero outside the row's chosen atoms. All rows are computed in one pass over the
    postings grouped by position (``embedding_bag`` with per-posting weights), which reads each
    posting once instead of once per question row. ``row_lse`` as in :func:`exact_scores`.
    """
    if n_positions == 0 or queries.shape[0] == 0:
        return np.zeros(n_positions, np.float32)
    if allowed is not None and not allowed.any():
        return np.zeros(n_positions, np.float32)
    logits = _aligned_logits(
        queries, sae, postings, n_positions, atoms_per_query, allowed, temperature
    )
    if row_lse is None:
        weights = torch.softmax(logits, dim=1)
    else:
        weights = torch.exp(logits - torch.from_numpy(np.asarray(row_lse, np.float32))[:, None])
    return weights.mean(dim=0).numpy().astype(np.float32)


def aligned_row_logsumexp(
    queries: np.ndarray,
    sae: TopKSAE,
    postings: Postings,
    n_positions: int,
    atoms_per_query: int,
    allowed: np.ndarray | None = None,
    temperature: float = 1.0,
) -> np.ndarray:
    """:func:`exact_row_logsumexp` for the ``aligned`` scorer."""
    if n_positions == 0 or (allowed is not None and not allowed.any()):
        return np.full(queries.shape[0], -np.inf, np.float64)
    logits = _aligned_logits(
        queries, sae, postings, n_positions, atoms_per_query, allowed, temperature
    )
    return torch.logsumexp(logits, dim=1).double().numpy()


def _aligned_logits(
    queries: np.ndarray,
    sae: TopKSAE,
    postings: Postings,
    n_positions: int,
    atoms_per_query: int,
    allowed: np.ndarray | None,
    temperature: float,
) -> torch.Tensor:
    """(n_q, n_positions) logits through the SAE; ``-inf`` outside ``allowed``."""
    atoms = sae.W_dec.detach().float().numpy()
    weights = queries.astype(np.float32) @ atoms.T  # (n_q, n_latents): q.d_j
    m = min(atoms_per_query, atoms.shape[0])
    if m < atoms.shape[0]:
        chosen = np.argpartition(-weights, m - 1, axis=1)[:, :m]
        kept = np.zeros_like(weights)
        np.put_along_axis(kept, chosen, np.take_along_axis(weights, chosen, axis=1), axis=1)
        weights = kept
    scale = 1.0 / (math.sqrt(queries.shape[1]) * temperature)
    ids, acts, offsets = postings.by_position(n_positions)
    logits = torch.nn.functional.embedding_bag(
        torch.from_numpy(ids),
        torch.from_numpy(np.ascontiguousarray(weights.T * np.float32(scale))),
        torch.from_numpy(offsets),
        mode="sum",
        per_sample_weights=torch.from_numpy(acts),
    ).T.contiguous()  # (n_q, n_positions)
    if allowed is not None:
        logits.masked_fill_(~torch.from_numpy(allowed)[None, :], -math.inf)
    return logits


def coactivation_scores(
    queries: np.ndarray,
    sae: TopKSAE,
    postings: Postings,
    n_positions: int,
    allowed: np.ndarray | None = None,
    key_coding: str = "encoder",
) -> np.ndarray:
    """S3 eq. 4: sum over question features f of ``a_q(f) idf(f)`` at every posting of f.

    Question vectors are coded the way the index coded its keys (``key_coding``), so both sides
    name features alike.
    """
    vectors = torch.from_numpy(queries.astype(np.float32))
    with torch.no_grad():
        ids, acts = code_vectors(sae, vectors, key_coding)
    ids_np = ids.numpy().reshape(-1)
    acts_np = acts.numpy().reshape(-1)
    df = postings.doc_freq().astype(np.float64)
    idf = 1.0 / (np.log1p(df) + 1.0)
    positions, _, owner = postings.gather(ids_np)
    contribution = (acts_np * idf[ids_np])[owner]
    scores = np.bincount(positions, weights=contribution, minlength=n_positions)
    if allowed is not None:
        scores = np.where(allowed, scores, 0.0)
    total = scores.sum()
    # Normalised to sum 1 so heads weigh equally, like the attention distributions above.
    return (scores / total if total > 0 else scores).astype(np.float32)
