"""The shipped compact index: postings of pursuit-coded k = 4 SAEs only, an order of magnitude
smaller than the default index, still answering from the model's attention."""

from __future__ import annotations

import pytest

from s3_retriever.eval.needle import QUESTION, needle_found, plant
from tests.integration.conftest import real_text, requires_model


@requires_model
@pytest.mark.model
def test_compact_index_is_small_and_finds_the_needle() -> None:
    from s3_retriever import S3Retriever

    text = plant(real_text(0)[:24_000], 0.5)
    compact = S3Retriever.from_pretrained(compact=True)
    default = S3Retriever.from_pretrained()
    assert compact.bundle.key_coding == "pursuit"
    assert {s.config.k for s in compact.bundle.saes.values()} == {4}
    assert not compact.config.store_keys and compact.config.scoring.scorer == "aligned"
    for retriever in (compact, default):
        retriever.add_documents([text], ids=["haystack"])
    compact_bytes = sum(compact.index.nbytes().values())
    default_bytes = sum(default.index.nbytes().values())
    # Per token: 2 fields x ~10.5 B of postings + tables, against 2 x (68 + ~65) B + tables.
    assert compact_bytes * 6 < default_bytes, (compact_bytes, default_bytes)
    hits = compact.retrieve(QUESTION, token_budget=256, mode="hybrid")
    assert needle_found(hits, text), [h.text[:60] for h in hits]
