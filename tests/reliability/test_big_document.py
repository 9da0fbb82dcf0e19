"""One very long document is scanned in bounded memory (tiny model, fresh process per size).

CI compares 10k with 100k tokens; the 2-million-token case (about a minute) is marked slow.
"""

from __future__ import annotations

import pytest

from tests.reliability.big_document import measure_in_subprocess

SCAN_SLACK_MIB = 24.0
"""Allowed growth of the scan's working memory between sizes: allocator noise, not per token."""
MAX_BYTES_PER_TOKEN = 1024.0
"""Ceiling on add_documents' peak memory per token: the index keeps ~90 bytes per token and its
staging arrays (float keys, SAE codes, sort order) a few hundred more."""


def _check(small_tokens: int, large_tokens: int) -> None:
    small = measure_in_subprocess(small_tokens)
    large = measure_in_subprocess(large_tokens)
    assert small["tokens"] == small["scanned"] == small_tokens
    assert large["tokens"] == large["scanned"] == large_tokens
    # The scan itself holds one batch of chunks, whatever the document's length.
    assert large["scan_working_mib"] <= small["scan_working_mib"] + SCAN_SLACK_MIB, (small, large)
    # Indexing grows linearly with the token arrays, and no faster.
    assert large["add_peak_bytes_per_token"] <= MAX_BYTES_PER_TOKEN, large
    assert large["add_peak_bytes_per_token"] <= 1.25 * small["add_peak_bytes_per_token"], (
        small,
        large,
    )


def test_long_document_memory_is_bounded() -> None:
    _check(10_000, 100_000)


@pytest.mark.slow
def test_two_million_token_document() -> None:
    _check(200_000, 2_000_000)
