"""Position scorers: how much a question attends to each indexed token.

Three scorers share one interface (question vectors in, one score per global position out):

- ``exact``: attention over stored int8 keys of the retrieval heads. The reference.
- ``aligned``: attention through the SAE. With ``k ~ sum_j a_j d_j + b_dec`` the logit is
  ``q.k ~ sum_j a_j(t) (q.d_j) + q.b_dec``; the question picks the atoms with the largest
  ``q.d_j`` and sums ``a_j(t) (q.d_j)`` over their postings. ``q.b_dec`` is the same for every
  position and cancels in the softmax.
- ``coactivation``: the S3 paper's scoring (S3 eq. 4): question and key feature ids must match,
  weighted by the question activation and ``idf(f) = 1 / (log(1 + df(f)) + 1)``.

The first two turn logits into an attention distribution per question token (softmax over every
candidate position) and average it over question tokens; METHOD.md measured this far above
max- or mean-of-logits. Heads are averaged with equal weight.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from s3_retriever.cluster_search import clustered_exact_scores
from s3_retriever.index import Field, KeyStore, Postings
from s3_retriever.int8_dot import QuestionCodes, int8_logits
from s3_retriever.pursuit import code_vectors
from s3_retriever.sae import SAEBundle, TopKSAE

ScorerName = Literal["exact", "aligned", "coactivation"]
SCORERS: tuple[str, ...] = ("exact", "aligned", "coactivation")

# Positions per block when streaming the exact scorer's softmax: bounds memory at
# block x question tokens x 4 bytes whatever the corpus size.
_BLOCK = 1 << 18
# Float logits the fast exact path holds at once (elements): 256 MiB.
_LOGIT_BUDGET = 1 << 26


@dataclass(frozen=True)
class ScoringConfig:
    """How a question is scored against the index."""

    scorer: ScorerName = "exact"
    """``exact`` (stored keys), ``aligned`` (SAE atoms picked by q.d_j) or ``coactivation``."""
    atoms_per_query: int = 2048
    """``aligned``: atoms each question token selects by ``q.d_j`` (clamped to the dictionary).
    On tuning questions, S3-Pure recall@1024 was 0.679 with 64 atoms, 0.726 with 256 and 0.837
    with all 2,048, against 0.821 for exact attention (docs/results/tune_atoms.json)."""
    center_queries: bool = True
    """Subtract the model's mean query vector per head before scoring (METHOD.md: ~4x better)."""
    temperature: float = 1.0
    """Softmax temperature on top of the usual 1/sqrt(head_dim)."""
    cluster_search_above: int | None = 65_536
    """``exact``: past this many candidate positions, each question row reads only the keys of
    its nearest clusters (:mod:`s3_retriever.cluster_search`); ``None`` always reads every key.
    Below it, reading every key takes tens of ms and is exact."""
    positions_per_row: int = 4096
    """``exact`` clustered search: keys each question row reads (whole clusters, at least this
    many). On a 100k-token index of HotpotQA haystacks (20 questions), 2,048 / 4,096 / 16,384
    retrieved 0.927 / 0.972 / 1.000 of the full search's text at a 1,024-token budget, with
    evidence recall 0.738 / 0.769 / 0.760 against the full search's 0.760
    (docs/results/bench_cluster_search.md)."""
    query_tokens: Literal["all", "content"] = "content"
    """Which question tokens vote: ``all``, or ``content`` (drop stop words and punctuation,
    whose attention is spread thin over the whole context). ``content`` found the needle at
    10/10 depths against 9/10, with HotpotQA recall equal within noise
    (docs/results/tune_query_tokens.json)."""

    def __post_init__(self) -> None:
        if self.scorer not in SCORERS:
            raise ValueError(f"scorer must be one of {', '.join(SCORERS)}; got {self.scorer!r}")
        if self.atoms_per_query < 1:
            raise ValueError("atoms_per_query must be at least 1")
        if not 0 < self.temperature < float("inf"):  # also refuses NaN
            raise ValueError(f"temperature must be positive and finite, got {self.temperature}")
        if self.cluster_search_above is not None and self.cluster_search_above < 0:
            raise ValueError("cluster_search_above must be None or at least 0")
        if self.positions_per_row < 1:
            raise ValueError("positions_per_row must be at least 1")
        if self.query_tokens not in ("all", "content"):
            raise ValueError(f"query_tokens must be 'all' or 'content', got {self.query_tokens!r}")


# English function words: their attention spreads over the whole context instead of pointing.
# fmt: off
_STOP_WORDS = frozenset((
    "a", "an", "the", "of", "to", "in", "on", "at", "by", "for", "from", "with", "about", "as",
    "into", "is", "are", "was", "were", "be", "been", "being", "am", "do", "does", "did", "done",
    "have", "has", "had", "what", "which", "who", "whom", "whose", "when", "where", "why", "how",
    "that", "this", "these", "those", "it", "its", "and", "or", "but", "not", "no", "if", "then",
    "than", "so", "such", "can", "could", "would", "should", "will", "shall", "may", "might",
    "must", "there", "their", "they", "them", "he", "she", "his", "her", "him", "we", "our", "us",
    "you", "your", "i", "me", "my",
))
# fmt: on


def content_token_indices(text: str, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Indices of tokens inside a content word (not a stop word, has a letter or digit)."""
    keep = []
    for index, (start, end) in enumerate(zip(starts.tolist(), ends.tolist(), strict=True)):
        left, right = start, end
        while left < right and text[left].isspace():
            left += 1
        while left > 0 and text[left - 1].isalnum():
            left -= 1
        while right < len(text) and text[right].isalnum():
            right += 1
        word = text[left:right].strip().lower()
        if any(ch.isalnum() for ch in word) and word not in _STOP_WORDS:
            keep.append(index)
    return np.asarray(keep, dtype=np.int64)


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


def score_positions(
    head_queries: Mapping[tuple[int, int], np.ndarray],
    config: ScoringConfig,
    n_positions: int,
    kv_group: int,
    key_stores: Mapping[Field, KeyStore],
    postings: Mapping[Field, Postings],
    bundle: SAEBundle,
    allowed: np.ndarray | None = None,
    row_lse: Mapping[tuple[int, int], np.ndarray] | None = None,
) -> np.ndarray:
    """Score every position for one question.

    Args:
        head_queries: (layer, query head) -> (question tokens, head_dim) pre-RoPE queries.
        kv_group: query heads per KV head (GQA); query head h reads KV head ``h // kv_group``.
        allowed: optional mask of candidate positions (metadata filters), applied before ranking.
        row_lse: (layer, query head) -> every question row's softmax normaliser over the whole
            corpus, from :func:`position_logsumexp` combined over shards. Given, every key is read
            (no clustered search) and each softmax is divided by it instead of by its own sum.
    """
    total = np.zeros(n_positions, np.float32)
    if n_positions == 0 or not head_queries:
        return total
    if row_lse is not None and config.scorer == "coactivation":
        raise ValueError(_NO_SHARDED_COACTIVATION)
    exact_by_field: dict[Field, list[tuple[tuple[int, int], np.ndarray]]] = {}
    for head, field_key, q in _scored_queries(head_queries, config, kv_group, bundle):
        layer = head[0]
        lse = None if row_lse is None else row_lse[head]
        if config.scorer == "exact":
            # Heads sharing a KV head (GQA) are scored together: their keys are read once.
            if len(q):
                exact_by_field.setdefault(field_key, []).append((head, q))
        elif config.scorer == "aligned":
            total += aligned_scores(
                bundle.map_queries(layer, q),
                bundle.saes[layer],
                postings[field_key],
                n_positions,
                config.atoms_per_query,
                allowed,
                config.temperature,
                lse,
            )
        else:
            total += coactivation_scores(
                bundle.map_queries(layer, q),
                bundle.saes[layer],
                postings[field_key],
                n_positions,
                allowed,
                bundle.key_coding,
            )
    n_candidates = n_positions if allowed is None else int(allowed.sum())
    threshold = config.cluster_search_above
    clustered = row_lse is None and threshold is not None and n_candidates > threshold
    for field_key, group in exact_by_field.items():
        rows, sizes = np.concatenate([q for _, q in group]), [len(q) for _, q in group]
        if clustered:
            total += clustered_exact_scores(
                rows,
                key_stores[field_key],
                n_positions,
                allowed,
                config.temperature,
                sizes,
                config.positions_per_row,
            )
        else:
            lse = None if row_lse is None else np.concatenate([row_lse[h] for h, _ in group])
            total += exact_scores(
                rows, key_stores[field_key], n_positions, allowed, config.temperature, sizes, lse
            )
    return total / len(head_queries)


_NO_SHARDED_COACTIVATION = (
    "the coactivation scorer normalises by a sum over the whole corpus that shards do not share; "
    "use the exact or aligned scorer with a sharded index"
)


def position_logsumexp(
    head_queries: Mapping[tuple[int, int], np.ndarray],
    config: ScoringConfig,
    n_positions: int,
    kv_group: int,
    key_stores: Mapping[Field, KeyStore],
    postings: Mapping[Field, Postings],
    bundle: SAEBundle,
    allowed: np.ndarray | None = None,
) -> dict[tuple[int, int], np.ndarray]:
    """Every question row's softmax normaliser (log-sum-exp) over this index's candidates.

    One index's part of the statistic that :func:`score_positions` takes as ``row_lse``: over
    shards, the whole corpus's normaliser is ``np.logaddexp.reduce`` of the shards' values.
    """
    if config.scorer == "coactivation":
        raise ValueError(_NO_SHARDED_COACTIVATION)
    out: dict[tuple[int, int], np.ndarray] = {}
    for head, field_key, q in _scored_queries(head_queries, config, kv_group, bundle):
        if config.scorer == "exact":
            out[head] = exact_row_logsumexp(
                q, key_stores[field_key], n_positions, allowed, config.temperature
            )
        else:
            out[head] = aligned_row_logsumexp(
                bundle.map_queries(head[0], q),
                bundle.saes[head[0]],
                postings[field_key],
                n_positions,
                config.atoms_per_query,
                allowed,
                config.temperature,
            )
    return out


def _scored_queries(
    head_queries: Mapping[tuple[int, int], np.ndarray],
    config: ScoringConfig,
    kv_group: int,
    bundle: SAEBundle,
) -> Iterator[tuple[tuple[int, int], Field, np.ndarray]]:
    """``(head, key field, question vectors)`` as the scorers read them (centred when set)."""
    query_means = bundle.query_means
    for (layer, head), vectors in head_queries.items():
        q = vectors
        if config.center_queries and config.scorer != "coactivation" and layer in query_means:
            q = vectors - query_means[layer][head].numpy()[None, :]
        yield (layer, head), (layer, head // kv_group), q
