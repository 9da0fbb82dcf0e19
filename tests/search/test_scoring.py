"""Differential tests of the three position scorers against brute force over every position."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import s3_retriever.search.exact as scoring
from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.postings import Postings
from s3_retriever.sae.bundle import TopKSAE
from s3_retriever.search.exact import exact_scores, exact_scores_reference
from s3_retriever.search.scoring import ScoringConfig, score_positions
from s3_retriever.search.through_sae import aligned_scores, coactivation_scores
from tests.conftest import HEAD_DIM, make_bundle

N_POS = 97
EXACT_RTOL = 5e-4
"""The exact scorer's search path codes questions in ~16 bits (two int8 parts); its attention
weights match float64 to a few 1e-4 relative."""


def _rng(seed: int) -> np.random.Generator:
    return np.random.default_rng(seed)


def _key_store(keys: np.ndarray) -> KeyStore:
    store = KeyStore(keys.shape[1])
    order = _rng(11).permutation(len(keys))
    half = len(keys) // 2
    for part in (order[:half], order[half:]):
        store.append(part.astype(np.int64), keys[part])
    store.flush(len(keys))
    return store


def _softmax_rows(logits: np.ndarray, allowed: np.ndarray | None) -> np.ndarray:
    out = np.zeros_like(logits, dtype=np.float64)
    cols = np.ones(logits.shape[1], bool) if allowed is None else allowed
    if not cols.any():
        return out
    sub = logits[:, cols].astype(np.float64)
    sub = np.exp(sub - sub.max(axis=1, keepdims=True))
    out[:, cols] = sub / sub.sum(axis=1, keepdims=True)
    return out


def _dense_attention(
    queries: np.ndarray, keys: np.ndarray, allowed: np.ndarray | None, temperature: float = 1.0
) -> np.ndarray:
    logits = queries.astype(np.float64) @ keys.astype(np.float64).T
    logits /= math.sqrt(queries.shape[1]) * temperature
    return _softmax_rows(logits, allowed).mean(axis=0)


def _sae() -> TopKSAE:
    return make_bundle("tiny", seed=3).saes[1]


def _codes(sae: TopKSAE, keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with torch.no_grad():
        ids, acts = sae.encode(torch.from_numpy(keys))
    return ids.numpy(), acts.numpy().astype(np.float16).astype(np.float64)


def _postings(sae: TopKSAE, keys: np.ndarray, exact: bool = True) -> Postings:
    """Postings of ``keys``; ``exact`` keeps float16 activations, as the brute force reads them."""
    ids, acts = _codes(sae, keys)
    postings = Postings(sae.config.n_latents, exact_activations=exact)
    cut = len(keys) // 3
    positions = np.arange(len(keys), dtype=np.int64)
    postings.append(positions[cut:], ids[cut:], acts[cut:])
    postings.append(positions[:cut], ids[:cut], acts[:cut])
    postings.flush()
    return postings


@pytest.fixture()
def keys() -> np.ndarray:
    return (_rng(0).standard_normal((N_POS, HEAD_DIM)) * 1.5).astype(np.float32)


@pytest.fixture()
def queries() -> np.ndarray:
    return (_rng(1).standard_normal((5, HEAD_DIM)) * 2.0).astype(np.float32)


@pytest.fixture()
def allowed() -> np.ndarray:
    mask = _rng(2).random(N_POS) < 0.5
    mask[:20] = False
    return mask


# ---------------------------------------------------------------------------------- exact


@pytest.mark.parametrize("block", [None, 7, 20, 1])
@pytest.mark.parametrize("use_mask", [False, True])
def test_exact_matches_dense_softmax(
    monkeypatch: pytest.MonkeyPatch,
    keys: np.ndarray,
    queries: np.ndarray,
    allowed: np.ndarray,
    block: int | None,
    use_mask: bool,
) -> None:
    """The streamed two-pass softmax equals a dense one over all dequantised keys, any block."""
    if block is not None:
        monkeypatch.setattr(scoring, "_BLOCK", block)
    store = _key_store(keys)
    mask = allowed if use_mask else None
    got = exact_scores(queries, store, N_POS, mask)
    want = _dense_attention(queries, store.dequantize(0, N_POS), mask)
    assert got.shape == (N_POS,)
    np.testing.assert_allclose(got, want, rtol=EXACT_RTOL, atol=1e-7)
    assert got.sum() == pytest.approx(1.0, abs=1e-5)
    if mask is not None:
        assert np.all(got[~mask] == 0)


def test_exact_temperature(keys: np.ndarray, queries: np.ndarray) -> None:
    """Temperature divides the logits before the softmax."""
    store = _key_store(keys)
    got = exact_scores(queries, store, N_POS, None, temperature=2.5)
    want = _dense_attention(queries, store.dequantize(0, N_POS), None, temperature=2.5)
    np.testing.assert_allclose(got, want, rtol=EXACT_RTOL, atol=1e-7)
    assert not np.allclose(got, exact_scores(queries, store, N_POS), rtol=1e-3)


def test_exact_with_nothing_allowed(
    monkeypatch: pytest.MonkeyPatch, keys: np.ndarray, queries: np.ndarray
) -> None:
    """An all-False mask gives zeros, not NaN."""
    monkeypatch.setattr(scoring, "_BLOCK", 10)
    got = exact_scores(queries, _key_store(keys), N_POS, np.zeros(N_POS, bool))
    assert np.all(got == 0)


def test_exact_large_logits_stay_finite(monkeypatch: pytest.MonkeyPatch, keys: np.ndarray) -> None:
    """Logits far beyond exp()'s range still give a normalised distribution."""
    monkeypatch.setattr(scoring, "_BLOCK", 16)
    big = (_rng(4).standard_normal((3, HEAD_DIM)) * 400).astype(np.float32)
    store = _key_store(keys)
    got = exact_scores(big, store, N_POS)
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(
        got, _dense_attention(big, store.dequantize(0, N_POS), None), atol=1e-5
    )


@pytest.mark.parametrize("use_mask", [False, True])
def test_fast_exact_path_agrees_with_straightforward_path(
    monkeypatch: pytest.MonkeyPatch, use_mask: bool
) -> None:
    """The int8 search path (heads of one KV head batched, row passes bounded) gives the
    float32 reference's scores within 1e-3 relative (question codes keep ~16 bits, so a logit
    moves by ~1e-5 of the logit range), and the same ranking of the top positions."""
    monkeypatch.setattr(scoring, "_BLOCK", 300)
    monkeypatch.setattr(scoring, "_LOGIT_BUDGET", 2500)  # forces several row passes
    rng = _rng(21)
    n = 1000
    keys = (rng.standard_normal((n, HEAD_DIM)) * rng.uniform(0.2, 3, (n, 1))).astype(np.float32)
    store = _key_store(keys)
    heads = [(rng.standard_normal((r, HEAD_DIM)) * 4).astype(np.float32) for r in (3, 1, 5)]
    mask = rng.random(n) < 0.5 if use_mask else None
    fast = exact_scores(np.concatenate(heads), store, n, mask, 1.0, groups=[3, 1, 5])
    slow = sum(exact_scores_reference(q, store, n, mask) for q in heads)
    np.testing.assert_allclose(fast, slow, rtol=1e-3, atol=1e-8)
    top = 20
    assert np.array_equal(np.argsort(-fast)[:top], np.argsort(-slow)[:top])


# ---------------------------------------------------------------------------------- aligned


def _brute_aligned(
    queries: np.ndarray,
    sae: TopKSAE,
    ids: np.ndarray,
    acts: np.ndarray,
    atoms_per_query: int,
    allowed: np.ndarray | None,
    temperature: float = 1.0,
) -> np.ndarray:
    atoms = sae.W_dec.detach().double().numpy()
    weights = queries.astype(np.float64) @ atoms.T
    scale = 1.0 / (math.sqrt(queries.shape[1]) * temperature)
    n = ids.shape[0]
    logits = np.zeros((queries.shape[0], n))
    for i in range(queries.shape[0]):
        chosen = set(np.argsort(-weights[i])[:atoms_per_query].tolist())
        for t in range(n):
            for j, a in zip(ids[t].tolist(), acts[t].tolist(), strict=True):
                if j in chosen:
                    logits[i, t] += a * weights[i, j] * scale
    return _softmax_rows(logits, allowed).mean(axis=0)


@pytest.mark.parametrize("atoms_per_query", [1, 5, 17])
@pytest.mark.parametrize("use_mask", [False, True])
def test_aligned_matches_brute_force(
    keys: np.ndarray,
    queries: np.ndarray,
    allowed: np.ndarray,
    atoms_per_query: int,
    use_mask: bool,
) -> None:
    """aligned_scores equals the per-position sum over the question's chosen atoms, softmaxed."""
    sae = _sae()
    ids, acts = _codes(sae, keys)
    mask = allowed if use_mask else None
    got = aligned_scores(queries, sae, _postings(sae, keys), N_POS, atoms_per_query, mask, 1.3)
    want = _brute_aligned(queries, sae, ids, acts, atoms_per_query, mask, 1.3)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    if mask is not None:
        assert np.all(got[~mask] == 0)


def test_compact_postings_keep_aligned_scores_within_tolerance(
    keys: np.ndarray, queries: np.ndarray
) -> None:
    """uint8 activations (2.2% per activation) move aligned scores by under 5% of the largest
    score and keep the best positions; the effect on retrieval of real questions is measured by
    benchmarks/index_size.py."""
    sae = _sae()
    m = sae.config.n_latents
    exact = aligned_scores(queries, sae, _postings(sae, keys, exact=True), N_POS, m)
    compact = aligned_scores(queries, sae, _postings(sae, keys, exact=False), N_POS, m)
    assert np.abs(compact - exact).max() <= 0.05 * exact.max()
    assert np.array_equal(np.argsort(-compact)[:3], np.argsort(-exact)[:3])
    assert not np.array_equal(compact, exact)


def test_aligned_with_every_atom_is_attention_on_reconstruction(
    keys: np.ndarray, queries: np.ndarray
) -> None:
    """With every atom chosen, aligned scores are softmax(q . (x_hat - b_dec)) over positions."""
    sae = _sae()
    ids, acts = _codes(sae, keys)
    with torch.no_grad():
        x_hat = sae.decode(torch.from_numpy(ids), torch.from_numpy(acts).float()).double().numpy()
    centred = x_hat - sae.b_dec.detach().double().numpy()
    got = aligned_scores(queries, sae, _postings(sae, keys), N_POS, sae.config.n_latents)
    want = _dense_attention(queries, centred, None)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-7)
    assert got.sum() == pytest.approx(1.0, abs=1e-5)


# ---------------------------------------------------------------------------------- coactivation


def _brute_coactivation(
    queries: np.ndarray,
    sae: TopKSAE,
    ids: np.ndarray,
    allowed: np.ndarray | None,
) -> np.ndarray:
    with torch.no_grad():
        q_ids, q_acts = sae.encode(torch.from_numpy(queries))
    n = ids.shape[0]
    df: dict[int, int] = {}
    for t in range(n):
        for j in ids[t].tolist():
            df[j] = df.get(j, 0) + 1
    scores = np.zeros(n)
    for t in range(n):
        if allowed is not None and not allowed[t]:
            continue
        features = set(ids[t].tolist())
        for i in range(queries.shape[0]):
            for f, a in zip(q_ids[i].tolist(), q_acts[i].tolist(), strict=True):
                if f in features:
                    scores[t] += a / (math.log(1 + df[f]) + 1)
    total = scores.sum()
    return scores / total if total > 0 else scores


@pytest.mark.parametrize("use_mask", [False, True])
def test_coactivation_matches_s3_eq4(
    keys: np.ndarray, queries: np.ndarray, allowed: np.ndarray, use_mask: bool
) -> None:
    """coactivation_scores equals S3 eq. 4 with idf = 1 / (log(1 + df) + 1), normalised to sum 1."""
    sae = _sae()
    ids, _ = _codes(sae, keys)
    mask = allowed if use_mask else None
    got = coactivation_scores(queries, sae, _postings(sae, keys), N_POS, mask)
    want = _brute_coactivation(queries, sae, ids, mask)
    assert want.sum() > 0
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-8)


def test_coactivation_without_shared_features_is_zero(keys: np.ndarray) -> None:
    """Positions sharing no feature with the question score zero."""
    sae = _sae()
    ids, acts = _codes(sae, keys)
    question = keys[:1]
    q_ids = set(_codes(sae, question)[0][0].tolist())
    keep = np.array([not (set(row.tolist()) & q_ids) for row in ids])
    postings = Postings(sae.config.n_latents)
    postings.append(np.flatnonzero(keep), ids[keep], acts[keep])
    got = coactivation_scores(question, sae, postings, N_POS)
    assert np.all(got == 0)


# ---------------------------------------------------------------------------------- combination


def test_score_positions_averages_heads_with_gqa_and_centring(
    keys: np.ndarray, queries: np.ndarray
) -> None:
    """Query head h reads KV head h // kv_group, after subtracting its own mean query."""
    bundle = make_bundle("tiny", seed=5)
    stores = {(1, 0): _key_store(keys), (1, 1): _key_store(keys[::-1].copy())}
    q_a, q_b = queries[:3], queries[2:]
    head_queries = {(1, 0): q_a, (1, 3): q_b}
    means = bundle.query_means[1].numpy()
    dense = {f: store.dequantize(0, N_POS) for f, store in stores.items()}
    for centre in (True, False):
        got = score_positions(
            head_queries,
            ScoringConfig(scorer="exact", center_queries=centre),
            N_POS,
            kv_group=2,
            key_stores=stores,
            postings={},
            bundle=bundle,
        )
        shift_a, shift_b = (means[0], means[3]) if centre else (0.0, 0.0)
        want = (
            _dense_attention(q_a - shift_a, dense[(1, 0)], None)
            + _dense_attention(q_b - shift_b, dense[(1, 1)], None)
        ) / 2
        np.testing.assert_allclose(got, want, rtol=EXACT_RTOL, atol=1e-7)


def test_score_positions_coactivation_is_never_centred(
    keys: np.ndarray, queries: np.ndarray
) -> None:
    """The coactivation scorer encodes raw question vectors, whatever center_queries says."""
    bundle = make_bundle("tiny", seed=5)
    sae = bundle.saes[1]
    postings = {(1, 0): _postings(sae, keys)}
    got = score_positions(
        {(1, 1): queries},
        ScoringConfig(scorer="coactivation"),
        N_POS,
        kv_group=2,
        key_stores={},
        postings=postings,
        bundle=bundle,
    )
    want = coactivation_scores(queries, sae, postings[(1, 0)], N_POS)
    np.testing.assert_allclose(got, want, rtol=1e-6)


def _spd(seed: int) -> torch.Tensor:
    m = torch.randn(HEAD_DIM, HEAD_DIM, generator=torch.Generator().manual_seed(seed))
    return (m @ m.T / HEAD_DIM + 0.5 * torch.eye(HEAD_DIM)).float()


def test_score_positions_aligned_reads_keys_through_key_map(
    keys: np.ndarray, queries: np.ndarray
) -> None:
    """With a key map A, postings hold codes of A k and questions are read as A^-1 q."""
    bundle = make_bundle("tiny", seed=6)
    key_map = _spd(0)
    bundle.key_maps = {1: key_map}
    sae = bundle.saes[1]
    mapped = bundle.map_keys(1, torch.from_numpy(keys)).numpy()
    np.testing.assert_allclose(mapped, keys @ key_map.numpy(), rtol=1e-5, atol=1e-5)
    postings = {(1, 0): _postings(sae, mapped)}
    got = score_positions(
        {(1, 1): queries},
        ScoringConfig(scorer="aligned", atoms_per_query=sae.config.n_latents, center_queries=False),
        N_POS,
        kv_group=2,
        key_stores={},
        postings=postings,
        bundle=bundle,
    )
    ids, acts = _codes(sae, mapped)
    with torch.no_grad():
        x_hat = sae.decode(torch.from_numpy(ids), torch.from_numpy(acts).float()).double().numpy()
    centred = x_hat - sae.b_dec.detach().double().numpy()
    dual = queries.astype(np.float64) @ np.linalg.inv(key_map.double().numpy())
    np.testing.assert_allclose(got, _dense_attention(dual, centred, None), rtol=1e-4, atol=1e-7)
    dual_ref = bundle.map_queries(1, queries)
    np.testing.assert_allclose((dual_ref @ mapped.T), queries @ keys.T, rtol=1e-3, atol=1e-3)


def test_score_positions_empty_inputs() -> None:
    """No positions or no heads give an all-zero vector of the right length."""
    bundle = make_bundle("tiny")
    kwargs: dict[str, object] = {"kv_group": 2, "key_stores": {}, "postings": {}, "bundle": bundle}
    assert score_positions({}, ScoringConfig(), 5, **kwargs).tolist() == [0.0] * 5  # type: ignore[arg-type]
    q = np.ones((1, HEAD_DIM), np.float32)
    assert score_positions({(1, 0): q}, ScoringConfig(), 0, **kwargs).shape == (0,)  # type: ignore[arg-type]


def test_scoring_config_validation() -> None:
    """Unknown scorers, atoms_per_query < 1 and non-positive temperatures are refused."""
    with pytest.raises(ValueError):
        ScoringConfig(scorer="dense")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        ScoringConfig(atoms_per_query=0)
    with pytest.raises(ValueError):
        ScoringConfig(temperature=0.0)
