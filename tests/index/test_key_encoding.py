"""The batched, pipelined key encoding against the straightforward per-chunk path."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from s3_retriever import ScanConfig
from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.postings import Postings
from s3_retriever.model.scan import tokenize
from tests.conftest import RetrieverFactory


def _reference_stores(
    retriever: object, texts: list[str]
) -> tuple[dict[tuple[int, int], Postings], dict[tuple[int, int], KeyStore]]:
    """Postings and key stores built one chunk at a time with a naive ``topk(relu(Wx + b))``."""
    from s3_retriever.retriever import S3Retriever

    assert isinstance(retriever, S3Retriever)
    docs = [tokenize(retriever.model.tokenizer, t) for t in texts]
    bases = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    postings = {f: Postings(retriever.bundle.saes[f[0]].config.n_latents) for f in retriever.fields}
    stores = {f: KeyStore(retriever.scanner.head_dim) for f in retriever.fields}
    for capture in retriever.scanner.scan(docs):
        first = int(bases[capture.doc_index]) + capture.token_start
        for layer, kv in retriever.fields:
            keys = capture.keys[layer][:, kv, :]
            positions = first + np.arange(keys.shape[0], dtype=np.int64)
            sae = retriever.bundle.saes[layer]
            with torch.no_grad():
                pre = torch.relu(
                    (keys.double() - sae.b_dec.double()) @ sae.W_enc.double().T + sae.b_enc.double()
                )
                acts, ids = pre.topk(sae.config.k, dim=-1)
            postings[(layer, kv)].append(positions, ids.numpy(), acts.float().numpy())
            stores[(layer, kv)].append(positions, keys.numpy())
    for p in postings.values():
        p.flush()
    for s in stores.values():
        s.flush(int(bases[-1]))
    return postings, stores


@pytest.mark.parametrize("batch_size", [1, 3])
def test_fast_encoding_matches_per_chunk_reference(
    make_retriever: RetrieverFactory, corpus: dict[str, str], batch_size: int
) -> None:
    """Same postings (latents, positions) and keys; activations within one storage grid step."""
    retriever = make_retriever(
        scan=ScanConfig(chunk_size=16, batch_size=batch_size, show_progress=False)
    )
    texts = list(corpus.values())
    retriever.add_documents(texts)
    ref_postings, ref_stores = _reference_stores(retriever, texts)
    total = 0
    for f, ref in ref_postings.items():
        fast = retriever.index.postings[f]
        fast.flush()
        # The float64 reference can only disagree on exact ties, which random weights never make.
        assert_same_postings(fast, ref)
        total += len(ref.decode()[0])
        np.testing.assert_array_equal(retriever.index.key_stores[f].codes, ref_stores[f].codes)
        np.testing.assert_array_equal(retriever.index.key_stores[f].scales, ref_stores[f].scales)
    assert total > 0


def test_batched_and_unbatched_scans_index_the_same(
    make_retriever: RetrieverFactory, corpus: dict[str, str]
) -> None:
    """Padding and batch size change nothing that is stored."""
    texts = list(corpus.values())
    one = make_retriever(scan=ScanConfig(chunk_size=16, batch_size=1, show_progress=False))
    many = make_retriever(scan=ScanConfig(chunk_size=16, batch_size=5, show_progress=False))
    one.add_documents(texts, ids=[str(i) for i in range(len(texts))])
    many.add_documents(texts, ids=[str(i) for i in range(len(texts))])
    for f in one.fields:
        assert_same_postings(one.index.postings[f], many.index.postings[f])


def assert_same_postings(a: Postings, b: Postings) -> None:
    """Same latents at the same positions; activations within one storage grid step."""
    a.flush()
    b.flush()
    np.testing.assert_array_equal(a.indptr, b.indptr)
    a_positions, a_acts = a.decode()
    b_positions, b_acts = b.decode()
    np.testing.assert_array_equal(a_positions, b_positions)
    # Activations are stored on a log grid whose steps are 4.4% apart (at most 2.2% error):
    # values that straddle a rounding boundary after float rounding land one code apart, so the
    # tolerance is one grid step.
    np.testing.assert_allclose(a_acts, b_acts, rtol=0.046, atol=1e-4)
