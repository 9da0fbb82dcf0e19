"""One very long document is scanned in bounded memory (tiny model, fresh process per phase).

CI compares 10k with 100k tokens; the 2-million-token case (about a minute) is marked slow.
"""

from __future__ import annotations

import pytest

from tests.reliability.big_document import measure_in_subprocess

SCAN_SLACK_MIB = 24.0
"""Allowed growth of the scan's working memory between sizes: allocator noise, not per token."""
MAX_MARGINAL_BYTES_PER_TOKEN = 1024.0
"""Ceiling on what add_documents' peak grows by per extra token: the index keeps ~90 bytes per
token, and the token arrays and staging arrays (float keys, SAE codes) a few hundred more."""


def _check(small_tokens: int, large_tokens: int) -> None:
    scan_small = measure_in_subprocess(small_tokens, "scan")
    scan_large = measure_in_subprocess(large_tokens, "scan")
    assert (scan_small["tokens"], scan_large["tokens"]) == (small_tokens, large_tokens)
    # The scan holds one batch of chunks, whatever the document's length.
    assert scan_large["working_mib"] <= scan_small["working_mib"] + SCAN_SLACK_MIB, (
        scan_small,
        scan_large,
    )
    add_small = measure_in_subprocess(small_tokens, "add")
    add_large = measure_in_subprocess(large_tokens, "add")
    assert (add_small["tokens"], add_large["tokens"]) == (small_tokens, large_tokens)
    # Indexing grows with the token arrays and the index itself, by a bounded amount per token.
    marginal = (
        (add_large["working_mib"] - add_small["working_mib"])
        * 2**20
        / (large_tokens - small_tokens)
    )
    assert marginal <= MAX_MARGINAL_BYTES_PER_TOKEN, (add_small, add_large, marginal)


def test_long_document_memory_is_bounded() -> None:
    _check(10_000, 100_000)


@pytest.mark.slow
def test_two_million_token_document() -> None:
    _check(200_000, 2_000_000)
