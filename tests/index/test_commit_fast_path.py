"""The fast commit (no position sort for ordered postings, float16 code table, keys quantised
where the scan ran, fields in threads, batched tokenising) writes the bytes the plain path wrote.

Each reference below is the plain arithmetic the fast path replaced, written out here.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

import s3_retriever.index.threads as threads
from s3_retriever.index.index import Index
from s3_retriever.index.key_encoding import quantize_keys_on_device
from s3_retriever.index.key_store import KeyStore, quantize_keys
from s3_retriever.index.postings import Postings, encode_varints, quantize_activations
from s3_retriever.model import scan as scan_module
from s3_retriever.model.scan import TokenizedText, tokenize

N_LATENTS, K = 64, 4


def _reference_arrays(
    chunks: list[tuple[np.ndarray, np.ndarray, np.ndarray]],
) -> dict[str, np.ndarray]:
    """Postings of ``chunks`` as the plain path stored them: int32 ids, float32 activations,
    a full (latent, position) sort, gaps as varints and float64 grid arithmetic."""
    positions = np.concatenate([np.repeat(p.astype(np.int64), K) for p, _, _ in chunks])
    ids = np.concatenate([i.reshape(-1).astype(np.int32) for _, i, _ in chunks])
    acts = np.concatenate([a.reshape(-1).astype(np.float32) for _, _, a in chunks])
    by_position = np.argsort(positions, kind="stable")
    ids, positions, acts = ids[by_position], positions[by_position], acts[by_position]
    order = np.argsort(ids, kind="stable")
    indptr = np.concatenate([[0], np.cumsum(np.bincount(ids, minlength=N_LATENTS))])
    positions, acts = positions[order], acts[order]
    gaps = np.diff(positions, prepend=np.int64(0))
    heads = indptr[:-1][np.diff(indptr) > 0]
    gaps[heads] = positions[heads]
    sizes = np.array([len(encode_varints(np.array([g]))) for g in gaps], np.int64)
    return {
        "indptr": indptr.astype(np.int64),
        "byteptr": np.concatenate([[0], np.cumsum(sizes)])[indptr].astype(np.int64),
        "position_bytes": encode_varints(gaps),
        "activation_codes": quantize_activations(acts.astype(np.float64)),
    }


def _chunks(
    rng: np.random.Generator, starts_lengths: list[tuple[int, int]]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    chunks = []
    for start, length in starts_lengths:
        ids = np.stack([rng.choice(N_LATENTS, K, replace=False) for _ in range(length)])
        acts = rng.exponential(1.0, (length, K)) * rng.choice([1e-4, 1.0, 500.0], (length, K))
        positions = start + np.arange(length, dtype=np.int64)
        chunks.append((positions, ids.astype(np.int16), acts.astype(np.float16)))
    return chunks


@pytest.mark.parametrize(
    "layout",
    [
        [(0, 300), (300, 300), (600, 41)],  # one document: positions in order, no sort
        [(0, 300), (341, 300), (300, 41), (641, 7)],  # short tails scanned last: sorted here
        [(5000, 50), (0, 200)],  # a gap in the positions, out of order
    ],
)
def test_postings_bytes_equal_plain_path(layout: list[tuple[int, int]]) -> None:
    rng = np.random.default_rng(len(layout))
    chunks = _chunks(rng, layout)
    postings = Postings(N_LATENTS)
    for positions, ids, acts in chunks:
        postings.append(positions, ids, acts)
    postings.flush()
    for part, expected in _reference_arrays(chunks).items():
        got = getattr(postings, part)
        assert got.dtype == expected.dtype, part
        np.testing.assert_array_equal(got, expected, err_msg=part)


def test_appended_postings_bytes_equal_one_flush() -> None:
    """The splice path (new positions after the indexed ones) gives the same bytes too."""
    rng = np.random.default_rng(7)
    chunks = _chunks(rng, [(0, 200), (200, 200), (400, 100)])
    postings = Postings(N_LATENTS)
    for positions, ids, acts in chunks[:2]:
        postings.append(positions, ids, acts)
    postings.flush()
    postings.append(*chunks[2])
    postings.flush()
    for part, expected in _reference_arrays(chunks).items():
        np.testing.assert_array_equal(getattr(postings, part), expected, err_msg=part)


def test_float16_code_table_equals_grid_arithmetic() -> None:
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)  # inf, nan, negatives included
    with np.errstate(invalid="ignore"):
        expected = quantize_activations(every.astype(np.float64))
    np.testing.assert_array_equal(quantize_activations(every), expected)
    shaped = every[:1000].reshape(10, 100)
    np.testing.assert_array_equal(quantize_activations(shaped), expected[:1000].reshape(10, 100))


def _random_keys(seed: int, n: int, dim: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    keys = torch.randn(n, dim, generator=gen) * torch.rand(n, 1, generator=gen) * 8
    keys[3] = 0.0  # an all-zero key keeps scale 1
    keys[5, 7] = 127.5  # a value that rounds to the clip bound
    return keys


@pytest.mark.parametrize(
    "device",
    [
        "cpu",
        pytest.param(
            "cuda",
            marks=pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
        ),
    ],
)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_device_key_quantisation_equals_numpy(device: str, dtype: torch.dtype) -> None:
    keys = _random_keys(0, 4096, 128).to(dtype)
    codes, scales = quantize_keys_on_device(keys.to(device).reshape(64, 64, 128))
    expected = quantize_keys(keys.float().numpy())
    np.testing.assert_array_equal(codes.cpu().reshape(4096, 128).numpy(), expected.codes)
    np.testing.assert_array_equal(scales.cpu().reshape(4096).numpy(), expected.scales)


def test_quantised_keys_store_like_float_keys() -> None:
    keys = _random_keys(1, 300, 16).numpy()
    positions = np.arange(300, dtype=np.int64)
    plain, quantised = KeyStore(16), KeyStore(16)
    plain.append(positions, keys)
    quantised.append(positions, quantize_keys(keys))
    plain.flush(300)
    quantised.flush(300)
    np.testing.assert_array_equal(plain.codes, quantised.codes)
    np.testing.assert_array_equal(plain.scales, quantised.scales)


def test_threaded_commit_equals_serial(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(3)
    fields = [(1, 0), (1, 1), (2, 0)]
    chunks = {f: _chunks(rng, [(0, 120), (120, 80)]) for f in fields}
    keys = {
        f: [(p, rng.standard_normal((len(p), 8)).astype(np.float32)) for p, _, _ in c]
        for f, c in chunks.items()
    }
    text = "word " * 200
    tokens = TokenizedText(np.zeros(200, np.int64), np.arange(200) * 5, np.arange(200) * 5 + 4)
    built = []
    for n_threads in (1, 4):
        monkeypatch.setattr(threads, "_MAX_THREADS", n_threads)
        monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
        index = Index(fields, 8, dict.fromkeys(fields, N_LATENTS))
        index.commit([text], ["d"], [{}], [tokens], keys, chunks)
        built.append(index)
    for f in fields:
        for part in Postings.PARTS:
            np.testing.assert_array_equal(
                getattr(built[0].postings[f], part), getattr(built[1].postings[f], part)
            )
        np.testing.assert_array_equal(built[0].key_stores[f].codes, built[1].key_stores[f].codes)


def test_commit_raises_what_a_thread_raised(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads.os, "cpu_count", lambda: 4)
    ran = []

    def fails() -> None:
        raise ValueError("broken field")

    with pytest.raises(ValueError, match="broken field"):
        threads.run_in_threads([lambda: ran.append(1), fails, lambda: ran.append(2)])
    assert sorted(ran) == [1, 2]


def test_batched_tokenising_equals_piece_by_piece(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(scan_module, "_TOKENIZE_PIECE_CHARS", 64)
    text = "The train leaves at noon.\nRivers run to the sea; " * 40
    fast = tokenize(tokenizer, text)
    ids, starts = [], []
    for start, end in scan_module._pieces(text, 64):
        enc = tokenizer(text[start:end], add_special_tokens=False, return_offsets_mapping=True)
        ids += enc["input_ids"]
        starts += [s + start for s, _ in enc["offset_mapping"]]
    assert len(list(scan_module._pieces(text, 64))) > scan_module._TOKENIZE_PIECES_PER_CALL
    np.testing.assert_array_equal(fast.input_ids, ids)
    np.testing.assert_array_equal(fast.starts, starts)


def test_shared_tokenizer_calls_give_each_texts_own_tokens(
    tokenizer: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Small pieces, so calls hold pieces of several texts and some texts span several calls.
    monkeypatch.setattr(scan_module, "_TOKENIZE_PIECE_CHARS", 64)
    texts = [
        "The train leaves at noon.\nRivers run to the sea; " * 9,
        "",
        "   ",
        "Short one.",
        "Ünïcode wörds and more words, " * 13,
    ]
    together = scan_module.tokenize_many(tokenizer, texts)
    assert len(together) == len(texts)
    for text, got in zip(texts, together, strict=True):
        alone = tokenize(tokenizer, text)
        np.testing.assert_array_equal(got.input_ids, alone.input_ids)
        np.testing.assert_array_equal(got.starts, alone.starts)
        np.testing.assert_array_equal(got.ends, alone.ends)
    assert len(together[0]) > 0 and len(together[1]) == 0
    assert sum(len(list(scan_module._pieces(t, 64))) for t in texts) > (
        scan_module._TOKENIZE_PIECES_PER_CALL
    )
