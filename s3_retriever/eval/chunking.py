"""Fixed-size token windows: the chunking every baseline uses on the corpus tasks.

RAG applications cut documents into chunks of a fixed number of model tokens (LangChain's and
LlamaIndex's token splitters). :func:`token_chunks` does that inside one document, so a chunk
never crosses a document boundary, and returns character ranges that the baselines in
:mod:`s3_retriever.eval.baselines` rank.
"""

from __future__ import annotations

from collections.abc import Callable

__all__ = ["CHUNK_TOKENS", "Offsets", "token_chunks", "token_splitter"]

CHUNK_TOKENS: dict[str, int] = {"hotpotqa-corpus": 128, "qmsum-corpus": 128, "needles": 128}
"""Evaluation tasks whose baselines rank fixed windows of this many model tokens per document
(the chunking of RAG applications); the others rank sentence units of at most 60 words."""

Offsets = Callable[[str], list[tuple[int, int]]]
"""``text -> [(start_char, end_char), ...]``, one pair per model token, in order."""


def token_chunks(text: str, offsets: Offsets, size: int = 128) -> list[tuple[int, int]]:
    """Consecutive windows of ``size`` tokens of ``text`` as ``(start_char, end_char)``.

    Windows are disjoint, in order, and stripped of surrounding whitespace; a window holding
    only whitespace is dropped. The last window of a document may be shorter than ``size``.
    """
    if size < 1:
        raise ValueError(f"chunk size must be at least 1 token, got {size}")
    spans = offsets(text)
    chunks: list[tuple[int, int]] = []
    for first in range(0, len(spans), size):
        window = spans[first : first + size]
        start, end = window[0][0], window[-1][1]
        while start < end and text[start].isspace():
            start += 1
        while end > start and text[end - 1].isspace():
            end -= 1
        if start < end:
            chunks.append((start, end))
    return chunks


def token_splitter(offsets: Offsets, size: int = 128) -> Callable[[str], list[tuple[int, int]]]:
    """A splitter for the baselines that cuts each document into ``size``-token windows."""
    if size < 1:
        raise ValueError(f"chunk size must be at least 1 token, got {size}")

    def split(text: str) -> list[tuple[int, int]]:
        return token_chunks(text, offsets, size)

    return split
