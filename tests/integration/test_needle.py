"""Needle in a haystack: the model's own attention (mode="s3") finds a planted fact."""

from __future__ import annotations

import pytest

from s3_retriever.eval.needle import DEPTHS, QUESTION, needle_found, plant
from tests.integration.conftest import real_text, requires_model


@requires_model
@pytest.mark.model
def test_needle_found_at_nine_of_ten_depths() -> None:
    from s3_retriever import S3Retriever

    retriever = S3Retriever.from_pretrained()
    haystack = real_text(0)[:95_000]
    found = []
    for depth in DEPTHS:
        text = plant(haystack, depth)
        retriever.delete(retriever.doc_ids)
        retriever.add_documents([text], ids=["haystack"])
        assert retriever.index.corpus.n_positions >= 20_000
        hits = retriever.retrieve(QUESTION, token_budget=256, mode="s3")
        assert sum(len(h.text) for h in hits) > 0
        found.append(needle_found(hits, text))
    print(f"needle found at {sum(found)}/10 depths: {found}")
    assert sum(found) >= 9, f"needle found at {sum(found)}/10 depths: {found}"
