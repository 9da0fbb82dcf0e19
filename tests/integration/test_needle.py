"""Needle in a haystack: the model's own attention (mode="s3") finds a planted fact."""

from __future__ import annotations

import pytest

from tests.integration.conftest import real_text, requires_model

# The question shares only "lighthouse" with the needle; everything else must be matched by
# meaning (colour/purple, repainted/painted, keeper's tower/lighthouse on Skellig Point).
NEEDLE = (
    "In the spring of 1987 the keeper of the lighthouse on Skellig Point painted its tower "
    "a vivid purple."
)
QUESTION = "What colour was the lighthouse repainted?"
DEPTHS = [0.0, 0.11, 0.22, 0.33, 0.44, 0.55, 0.66, 0.77, 0.88, 1.0]


def _plant(haystack: str, depth: float) -> str:
    cut = int(len(haystack) * depth)
    boundary = haystack.rfind("\n\n", 0, cut) if depth < 1.0 else len(haystack)
    boundary = max(boundary, 0)
    return haystack[:boundary] + "\n\n" + NEEDLE + "\n\n" + haystack[boundary:]


@requires_model
@pytest.mark.model
def test_needle_found_at_nine_of_ten_depths() -> None:
    from s3_retriever import S3Retriever

    retriever = S3Retriever.from_pretrained()
    haystack = real_text(0)[:95_000]
    found = []
    for depth in DEPTHS:
        text = _plant(haystack, depth)
        retriever.delete(retriever.doc_ids)
        retriever.add_documents([text], ids=["haystack"])
        assert retriever.corpus.n_positions >= 20_000
        hits = retriever.retrieve(QUESTION, token_budget=256, mode="s3")
        assert sum(len(h.text) for h in hits) > 0
        start = text.index(NEEDLE)
        found.append(any(h.start_char <= start and start + len(NEEDLE) <= h.end_char for h in hits))
    print(f"needle found at {sum(found)}/10 depths: {found}")
    assert sum(found) >= 9, f"needle found at {sum(found)}/10 depths: {found}"
