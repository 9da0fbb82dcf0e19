"""CSR postings and int8 key stores against plain Python references."""

from __future__ import annotations

from collections import defaultdict

import numpy as np
import pytest

from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.postings import (
    Postings,
    decode_varints,
    dequantize_activations,
    encode_varints,
    quantize_activations,
)

N_LATENTS = 40
K = 3


def _codes(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    ids = np.stack([rng.choice(N_LATENTS, size=K, replace=False) for _ in range(n)])
    acts = rng.random((n, K)).astype(np.float32) * 4
    return ids, acts


def _batches(
    seed: int, n_positions: int, n_batches: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    rng = np.random.default_rng(seed)
    order = rng.permutation(n_positions)
    out = []
    for part in np.array_split(order, n_batches):
        ids, acts = _codes(rng, len(part))
        out.append((part.astype(np.int64), ids, acts))
    return out


def _reference(
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[int, list[tuple[int, float]]]:
    ref: dict[int, list[tuple[int, float]]] = defaultdict(list)
    for positions, ids, acts in batches:
        for pos, row_ids, row_acts in zip(positions.tolist(), ids, acts, strict=True):
            for j, a in zip(row_ids.tolist(), row_acts.tolist(), strict=True):
                ref[j].append((pos, float(np.float16(a))))
    return {j: sorted(v) for j, v in ref.items()}


def _as_dict(postings: Postings) -> dict[int, list[tuple[int, float]]]:
    out: dict[int, list[tuple[int, float]]] = {}
    for j in range(postings.n_latents):
        pos, acts, owner = postings.gather(np.array([j]))
        assert np.all(owner == 0)
        if len(pos):
            out[j] = list(zip(pos.tolist(), acts.tolist(), strict=True))
    return out


def _build(
    batches: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
    flush_every: int = 0,
    exact: bool = True,
) -> Postings:
    """Postings with float16 activations (``exact``) so lists compare equal to the reference."""
    postings = Postings(N_LATENTS, exact_activations=exact)
    for i, (positions, ids, acts) in enumerate(batches):
        postings.append(positions, ids, acts)
        if flush_every and i % flush_every == 0:
            postings.flush()
    postings.flush()
    return postings


@pytest.mark.parametrize("flush_every", [0, 1, 2])
def test_postings_match_dict_of_lists(flush_every: int) -> None:
    """Each latent lists exactly its (position, float16 activation) pairs, position-sorted."""
    batches = _batches(0, 120, 5)
    postings = _build(batches, flush_every)
    assert _as_dict(postings) == _reference(batches)
    positions, _ = postings.decode()
    for j in range(N_LATENTS):
        lo, hi = postings.indptr[j], postings.indptr[j + 1]
        assert np.all(np.diff(positions[lo:hi]) > 0)
    assert postings.position_bytes.dtype == np.uint8
    assert postings.activation_codes.dtype == np.float16
    assert postings.indptr[-1] == 120 * K


def test_postings_doc_freq() -> None:
    """doc_freq counts the postings of each latent."""
    batches = _batches(1, 50, 3)
    postings = _build(batches)
    ref = _reference(batches)
    assert postings.doc_freq().tolist() == [len(ref.get(j, [])) for j in range(N_LATENTS)]


def test_postings_gather_many_latents_with_repeats() -> None:
    """gather() of several latents (repeats allowed) concatenates their lists with owner indices."""
    batches = _batches(2, 60, 2)
    postings = _build(batches)
    ref = _reference(batches)
    latents = np.array([5, 0, 5, 39, 17, 3])
    positions, acts, owner = postings.gather(latents)
    got: dict[int, list[list[tuple[int, float]]]] = defaultdict(list)
    for slot, latent in enumerate(latents.tolist()):
        sel = owner == slot
        got[latent].append(list(zip(positions[sel].tolist(), acts[sel].tolist(), strict=True)))
    for latent in set(latents.tolist()):
        for listing in got[latent]:
            assert listing == ref.get(latent, [])
    assert len(got[5]) == 2
    assert len(positions) == sum(len(ref.get(j, [])) for j in latents.tolist())


def test_postings_gather_empty() -> None:
    """gather() on an empty index or of unused latents returns empty arrays."""
    postings = Postings(N_LATENTS)
    positions, acts, owner = postings.gather(np.array([1, 2]))
    assert positions.shape == acts.shape == owner.shape == (0,)


def test_postings_independent_of_append_order() -> None:
    """Appending the same postings in different orders gives byte-identical CSR arrays."""
    batches = _batches(3, 90, 6)
    forward = _build(batches)
    backward = _build(batches[::-1], flush_every=2)
    shuffled = _build([batches[i] for i in (2, 0, 5, 1, 4, 3)], flush_every=1)
    for other in (backward, shuffled):
        assert np.array_equal(forward.indptr, other.indptr)
        assert np.array_equal(forward.byteptr, other.byteptr)
        assert np.array_equal(forward.position_bytes, other.position_bytes)
        assert np.array_equal(forward.activation_codes, other.activation_codes)


@pytest.mark.parametrize("exact", [True, False])
def test_appended_batches_splice_to_the_same_bytes(exact: bool) -> None:
    """Batches at ever larger positions (appends, merged without decoding) give the arrays of
    one sorted store, including latents that gain their first posting late."""
    rng = np.random.default_rng(9)
    batches = []
    start = 0
    for size in (30, 1, 45, 20):
        ids, acts = _codes(rng, size)
        if start == 0:  # latent 7 first appears in a later batch
            others = [j for j in range(N_LATENTS) if j != 7]
            ids = np.stack([rng.choice(others, size=K, replace=False) for _ in range(size)])
        batches.append((np.arange(start, start + size, dtype=np.int64), ids, acts))
        start += size
    one_shot = _build(batches, exact=exact)
    spliced = _build(batches, flush_every=1, exact=exact)
    for part in ("indptr", "byteptr", "position_bytes", "activation_codes"):
        assert np.array_equal(getattr(spliced, part), getattr(one_shot, part)), part
    assert _as_dict(spliced) == _as_dict(one_shot)


def test_postings_keep_drops_and_renumbers() -> None:
    """keep(mask) removes postings of dropped positions and renumbers the survivors densely."""
    n = 100
    batches = _batches(4, n, 4)
    postings = _build(batches)
    rng = np.random.default_rng(5)
    keep = rng.random(n) < 0.6
    new_index = {old: new for new, old in enumerate(np.flatnonzero(keep).tolist())}
    expected = {}
    for j, items in _reference(batches).items():
        kept = [(new_index[p], a) for p, a in items if keep[p]]
        if kept:
            expected[j] = kept
    postings.keep(keep)
    assert _as_dict(postings) == expected
    assert postings.indptr[-1] == len(postings.decode()[0]) == int(keep.sum()) * K


def test_postings_keep_flushes_pending() -> None:
    """Buffered postings are merged before keep() renumbers positions."""
    batches = _batches(6, 30, 2)
    postings = Postings(N_LATENTS)
    for positions, ids, acts in batches:
        postings.append(positions, ids, acts)
    keep = np.ones(30, bool)
    keep[:10] = False
    postings.keep(keep)
    assert postings.indptr[-1] == 20 * K
    assert int(postings.decode()[0].max()) == 19


@pytest.mark.parametrize("flush_every", [0, 1])
def test_compact_activations_within_grid_rounding(flush_every: int) -> None:
    """uint8 activations: positions exact, each activation within 2.2% relative whatever the
    flushes, and codes identical however the postings arrived (the grid is fixed)."""
    batches = _batches(7, 150, 5)
    compact = _build(batches, flush_every, exact=False)
    assert compact.activation_codes.dtype == np.uint8
    reference = _build(batches, flush_every)
    ref_pos, ref_act = reference.decode()
    pos, act = compact.decode()
    assert np.array_equal(pos, ref_pos)
    np.testing.assert_allclose(act, ref_act, rtol=0.022 + 1e-3)
    assert compact.nbytes < reference.nbytes
    other = _build(batches[::-1], flush_every=1, exact=False)
    assert np.array_equal(other.activation_codes, compact.activation_codes)


def test_activation_grid_edges() -> None:
    """Zero stays zero, tiny values keep the first code, huge ones saturate, codes round-trip."""
    acts = np.array([0.0, 1e-9, 2.0**-8, 1.0, 2.0**8, 1e9])
    codes = quantize_activations(acts)
    assert codes.tolist()[:2] == [0, 1] and codes[-1] == 255
    values = dequantize_activations(codes)
    assert values[0] == 0 and values[3] == pytest.approx(1.0, rel=0.022)
    assert np.array_equal(quantize_activations(values), codes)


@pytest.mark.parametrize("gaps", [[0], [0, 127, 128, 16383, 16384, 2**21, 2**28, 2**34 - 1]])
def test_varints_round_trip(gaps: list[int]) -> None:
    """LEB128 gaps decode to the same integers, one to five bytes each."""
    values = np.array(gaps + list(np.random.default_rng(0).integers(0, 2**34, 500)), np.int64)
    data = encode_varints(values)
    assert np.array_equal(decode_varints(data), values)
    assert int(np.count_nonzero(data < 0x80)) == len(values)
    with pytest.raises(ValueError, match="non-negative"):
        encode_varints(np.array([-1]))


def test_postings_check_flags_inconsistent_arrays() -> None:
    """check() reports pointers that do not cover the arrays (a damaged or forged file)."""
    postings = _build(_batches(8, 40, 2), exact=False)
    assert postings.check(40) is None
    postings.position_bytes = postings.position_bytes[:-1]
    assert postings.check(40) is not None
    retyped = _build(_batches(8, 40, 2), exact=False)
    retyped.activation_codes = retyped.activation_codes.astype(np.int64)
    assert retyped.check(40) == "postings arrays have the wrong types"


def test_keystore_round_trip_error_small() -> None:
    """int8 absmax quantisation keeps every key within 2% relative (L2) error."""
    rng = np.random.default_rng(0)
    keys = (rng.standard_normal((200, 16)) * rng.uniform(0.01, 50, size=(200, 1))).astype(
        np.float32
    )
    store = KeyStore(16)
    order = rng.permutation(200)
    store.append(order[:120].astype(np.int64), keys[order[:120]])
    store.append(order[120:].astype(np.int64), keys[order[120:]])
    store.flush(200)
    restored = store.dequantize(0, 200)
    error = np.linalg.norm(restored - keys, axis=1) / np.linalg.norm(keys, axis=1)
    assert error.max() < 0.02
    assert store.codes.dtype == np.int8
    assert store.nbytes == 200 * 16 + 200 * 4
    np.testing.assert_allclose(store.dequantize(50, 60), restored[50:60])


def test_keystore_zero_key_and_flush_growth() -> None:
    """An all-zero key round-trips to zeros; later flushes keep earlier keys in place."""
    store = KeyStore(4)
    store.append(np.array([0, 1]), np.array([[0, 0, 0, 0], [1, -2, 3, -4]], np.float32))
    store.flush(2)
    store.append(np.array([2]), np.array([[5, 5, 5, 5]], np.float32))
    store.flush(3)
    restored = store.dequantize(0, 3)
    assert np.all(restored[0] == 0)
    np.testing.assert_allclose(restored[1], [1, -2, 3, -4], rtol=0.02)
    np.testing.assert_allclose(restored[2], [5, 5, 5, 5], rtol=1e-6)


def test_keystore_keep() -> None:
    """keep(mask) keeps the rows of surviving positions in order."""
    rng = np.random.default_rng(1)
    keys = rng.standard_normal((10, 8)).astype(np.float32)
    store = KeyStore(8)
    store.append(np.arange(10), keys)
    store.flush(10)
    before = store.dequantize(0, 10)
    mask = np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1], bool)
    store.keep(mask)
    np.testing.assert_array_equal(store.dequantize(0, int(mask.sum())), before[mask])
