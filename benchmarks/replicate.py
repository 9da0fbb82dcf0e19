"""Grow a scanned index to a larger corpus by repeating it, without scanning again.

Scanning 10M tokens with the bundled model takes about an hour on two cores, so the latency
benchmark scans ~100k tokens of real text once and repeats its documents, keys and postings.
Search cost depends on the number of positions, the postings per latent and the distribution of
features over latents; repetition keeps the last two exactly and scales the first.
"""

from __future__ import annotations

import numpy as np

from s3_retriever import S3Retriever
from s3_retriever.index.corpus import Corpus
from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.postings import Postings, decode_varints, encode_varints


def replicate_corpus(corpus: Corpus, copies: int) -> Corpus:
    """``copies`` back-to-back repetitions of ``corpus``; copy ``r`` of doc ``d`` is ``d#r``."""
    n_positions, n_docs = corpus.n_positions, len(corpus)
    shifts = np.arange(copies, dtype=np.int64)
    return Corpus(
        doc_ids=[f"{d}#{r}" for r in range(copies) for d in corpus.doc_ids],
        texts=corpus.texts * copies,
        metadatas=[{**m, "copy": r} for r in range(copies) for m in corpus.metadatas],
        doc_token_start=(corpus.doc_token_start[None, :] + shifts[:, None] * n_positions).ravel(),
        doc_token_count=np.tile(corpus.doc_token_count, copies),
        unit_doc=(corpus.unit_doc[None, :] + shifts[:, None] * n_docs).ravel(),
        unit_chars=np.tile(corpus.unit_chars, (copies, 1)),
        unit_tokens=(corpus.unit_tokens[None, :, :] + shifts[:, None, None] * n_positions).reshape(
            -1, 2
        ),
    )


def replicate_keys(store: KeyStore, copies: int) -> KeyStore:
    return KeyStore(
        store.head_dim,
        codes=np.tile(store.codes, (copies, 1)),
        scales=np.tile(store.scales, copies),
    )


def replicate_postings(postings: Postings, copies: int, n_positions: int) -> Postings:
    """Each latent's list repeated ``copies`` times, shifted by ``n_positions`` each time.

    Only the first gap of every repeat differs from the original bytes (it jumps from the
    list's last position to its first one in the next copy), so the bytes are spliced, never
    decoded in full at the large size.
    """
    positions, _ = postings.decode()
    indptr, byteptr = postings.indptr, postings.byteptr
    byte_parts: list[np.ndarray] = []
    code_parts: list[np.ndarray] = []
    new_bytes = np.zeros(postings.n_latents, np.int64)
    for j in np.flatnonzero(np.diff(indptr)):
        lo, hi = int(indptr[j]), int(indptr[j + 1])
        raw = np.asarray(postings.position_bytes[byteptr[j] : byteptr[j + 1]])
        head = len(encode_varints(positions[lo : lo + 1]))
        jump = encode_varints(np.array([positions[lo] + n_positions - positions[hi - 1]]))
        rest = raw[head:]
        byte_parts.append(raw)
        byte_parts.extend([jump, rest] * (copies - 1))
        code_parts.append(np.tile(postings.activation_codes[lo:hi], copies))
        new_bytes[j] = len(raw) + (copies - 1) * (len(jump) + len(rest))
    grown = Postings(postings.n_latents, exact_activations=postings.exact_activations)
    grown.indptr = np.concatenate([[0], np.cumsum(np.diff(indptr) * copies)]).astype(np.int64)
    grown.byteptr = np.concatenate([[0], np.cumsum(new_bytes)]).astype(np.int64)
    grown.position_bytes = np.concatenate(byte_parts) if byte_parts else np.zeros(0, np.uint8)
    grown.activation_codes = (
        np.concatenate(code_parts) if code_parts else postings.activation_codes[:0]
    )
    return grown


def replicate(retriever: S3Retriever, copies: int) -> None:
    """Replace ``retriever``'s index by ``copies`` repetitions of it (in place)."""
    n_positions = retriever.index.corpus.n_positions
    for field_key, store in retriever.index.key_stores.items():
        store.flush(n_positions)
        retriever.index.key_stores[field_key] = replicate_keys(store, copies)
    for field_key, postings in retriever.index.postings.items():
        postings.flush()
        retriever.index.postings[field_key] = replicate_postings(postings, copies, n_positions)
    retriever.index.corpus = replicate_corpus(retriever.index.corpus, copies)
    retriever.index.bm25.invalidate()


def check_replication(postings: Postings, n_positions: int) -> None:
    """Two copies decode to the original positions followed by the shifted ones, per list."""
    positions, acts = postings.decode()
    doubled = replicate_postings(postings, 2, n_positions)
    got_positions, got_acts = doubled.decode()
    for j in np.flatnonzero(np.diff(postings.indptr))[:50]:
        lo, hi = postings.indptr[j], postings.indptr[j + 1]
        want = np.concatenate([positions[lo:hi], positions[lo:hi] + n_positions])
        glo, ghi = doubled.indptr[j], doubled.indptr[j + 1]
        if not np.array_equal(got_positions[glo:ghi], want) or not np.array_equal(
            got_acts[glo:ghi], np.tile(acts[lo:hi], 2)
        ):
            raise AssertionError(f"replicated postings of latent {j} are wrong")
    if len(decode_varints(doubled.position_bytes)) != 2 * len(positions):
        raise AssertionError("replicated postings hold the wrong number of positions")
