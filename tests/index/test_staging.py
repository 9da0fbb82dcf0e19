"""Bounded staging (keys in place, postings coded piece by piece and spliced) leaves the index the
plain path leaves: the same arrays, byte for byte, and the same hits.

The plain path is :meth:`Index.commit` of every chunk at once (what ``scan_texts`` and
``add_scanned`` still use); pieces are set to a few dozen tokens so every document here spans
several of them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

import s3_retriever.index.staging as staging
from s3_retriever.index.index import Index
from s3_retriever.index.key_store import quantize_keys
from s3_retriever.index.posting_merge import code_piece, splice_pieces
from s3_retriever.index.postings import Postings
from s3_retriever.model.scan import TokenizedText
from s3_retriever.testing import TRAINING_TEXT
from tests.conftest import RetrieverFactory

N_LATENTS, K, HEAD_DIM = 64, 4, 8
FIELDS = [(1, 0), (2, 1)]


def _tokens(n: int) -> TokenizedText:
    return TokenizedText(np.zeros(n, np.int64), np.arange(n) * 5, np.arange(n) * 5 + 4)


def _chunks(
    rng: np.random.Generator, doc_lengths: list[int], chunk: int
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]]:
    """(positions, ids, activations, float keys) per chunk of each document, in the scan's
    order: full chunks first, short tails last (so tails arrive out of position order)."""
    work, base = [], 0
    for length in doc_lengths:
        work += [(base + s, min(chunk, length - s)) for s in range(0, length, chunk)]
        base += length
    work.sort(key=lambda item: -item[1])
    out = []
    for start, length in work:
        ids = np.stack([rng.choice(N_LATENTS, K, replace=False) for _ in range(length)])
        acts = rng.exponential(1.0, (length, K)) * rng.choice([0.0, 1e-4, 1.0, 500.0], (length, K))
        keys = rng.standard_normal((length, HEAD_DIM)).astype(np.float32)
        positions = start + np.arange(length, dtype=np.int64)
        out.append((positions, ids.astype(np.int16), acts.astype(np.float16), keys))
    return out


def _commit_both(
    plain: Index, bounded: Index, rng: np.random.Generator, doc_lengths: list[int], piece: int
) -> None:
    chunks = _chunks(rng, doc_lengths, chunk=24)
    base = plain.n_positions
    texts = ["word " * n for n in doc_lengths]
    ids = [f"d{base}_{i}" for i in range(len(doc_lengths))]
    tokens = [_tokens(n) for n in doc_lengths]
    keys = {f: [(p + base, k) for p, _, _, k in chunks] for f in FIELDS}
    codes = {f: [(p + base, i, a) for p, i, a, _ in chunks] for f in FIELDS}
    plain.commit(texts, ids, [{}] * len(ids), tokens, keys, codes)
    staged = bounded.stage(sum(doc_lengths), piece_tokens=piece)
    for positions, latent_ids, acts, float_keys in chunks:
        for f in FIELDS:
            staged.keys[f].append((positions, quantize_keys(float_keys)))
            staged.postings[f].append((positions, latent_ids, acts))
    bounded.commit_staged(texts, ids, [{}] * len(ids), tokens, staged)


def _assert_same(plain: Index, bounded: Index) -> None:
    for f in FIELDS:
        for part in Postings.PARTS:
            a, b = getattr(plain.postings[f], part), getattr(bounded.postings[f], part)
            assert a.dtype == b.dtype, (f, part)
            np.testing.assert_array_equal(a, b, err_msg=f"{f} {part}")
        plain.key_stores[f].flush(plain.n_positions)
        np.testing.assert_array_equal(plain.key_stores[f].codes, bounded.key_stores[f].codes)
        np.testing.assert_array_equal(plain.key_stores[f].scales, bounded.key_stores[f].scales)
        # The cached last positions a later splice starts from agree with the plain ones.
        np.testing.assert_array_equal(
            plain.postings[f]._last_positions(), bounded.postings[f]._last_positions()
        )


@pytest.mark.parametrize("exact", [False, True])
def test_staged_commits_equal_plain_commits(exact: bool) -> None:
    rng = np.random.default_rng(7)
    plain = Index(FIELDS, HEAD_DIM, dict.fromkeys(FIELDS, N_LATENTS))
    bounded = Index(FIELDS, HEAD_DIM, dict.fromkeys(FIELDS, N_LATENTS))
    for index in (plain, bounded):
        index.postings = {f: Postings(N_LATENTS, exact_activations=exact) for f in FIELDS}
    # One long document, then several short ones onto a non-empty index (tails out of order),
    # then a call that fits in a single piece.
    for doc_lengths, piece in (([300], 50), ([10, 61, 7, 130, 24], 32), ([5], 64)):
        _commit_both(plain, bounded, rng, doc_lengths, piece)
        _assert_same(plain, bounded)


def test_a_piece_with_unreached_positions_is_refused() -> None:
    index = Index(FIELDS, HEAD_DIM, dict.fromkeys(FIELDS, N_LATENTS))
    staged = index.stage(40, piece_tokens=16)
    chunk = _chunks(np.random.default_rng(0), [30], chunk=30)[0]
    for f in FIELDS:
        staged.keys[f].append((chunk[0], quantize_keys(chunk[3])))
        staged.postings[f].append(chunk[:3])
    with pytest.raises(RuntimeError, match="never scanned"):
        index.commit_staged(["word " * 40], ["d"], [{}], [_tokens(40)], staged)
    assert len(index) == 0


def test_pieces_must_follow_the_indexed_positions() -> None:
    rng = np.random.default_rng(1)
    target = Postings(N_LATENTS)
    ids = rng.integers(0, N_LATENTS, (20, K)).astype(np.int16)
    target.append(np.arange(20, dtype=np.int64), ids, np.ones((20, K), np.float16))
    target.flush()
    piece = code_piece(N_LATENTS, False, 0, ids, np.ones((20, K), np.uint8))
    with pytest.raises(ValueError, match="follow"):
        splice_pieces(target, [piece], offset=10)


def test_add_documents_equals_the_plain_path(
    make_retriever: RetrieverFactory, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real scan (tiny model): the saved index of ``add_documents`` with 40-token pieces is
    the saved index of ``scan_texts`` + ``add_scanned``, file for file, and searches alike."""
    monkeypatch.setattr(staging, "PIECE_TOKENS", 40)
    monkeypatch.setattr(staging, "STAGE_ABOVE_CHARS", 0)
    long_text = " ".join(TRAINING_TEXT) + "\n\n" + " ".join(reversed(TRAINING_TEXT))
    calls = [([long_text], ["long"]), (list(TRAINING_TEXT[:3]), ["a", "b", "c"])]
    bounded, plain = make_retriever(), make_retriever()
    for texts, ids in calls:
        bounded.add_documents(texts, ids=ids)
        plain.add_scanned(plain.scan_texts(texts), ids)
    assert bounded.index.n_positions > 4 * 40
    bounded.save(tmp_path / "bounded")
    plain.save(tmp_path / "plain")
    files = sorted(p.relative_to(tmp_path / "plain") for p in (tmp_path / "plain").rglob("*.npy"))
    assert any("postings" in str(f) for f in files) and any("keys" in str(f) for f in files)
    for name in files:
        a, b = np.load(tmp_path / "plain" / name), np.load(tmp_path / "bounded" / name)
        assert a.dtype == b.dtype, name
        np.testing.assert_array_equal(a, b, err_msg=str(name))
    for question in ("ocean temperature coral", "the river floods the forest"):
        for mode in ("s3", "hybrid"):
            got = bounded.retrieve(question, token_budget=80, mode=mode)  # type: ignore[arg-type]
            want = plain.retrieve(question, token_budget=80, mode=mode)  # type: ignore[arg-type]
            assert [(h.doc_id, h.start_char, h.end_char, h.score) for h in got] == [
                (h.doc_id, h.start_char, h.end_char, h.score) for h in want
            ]
