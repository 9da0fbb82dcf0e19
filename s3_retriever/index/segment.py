"""Splitting documents into retrieval units: sentences and lines, capped in tokens.

Units are the atoms every method selects under a token budget (S3 spans grow to unit boundaries,
BM25 ranks units), so all methods compare on the same chunking. Offsets are exact: a unit is
``text[start:end]`` with no leading or trailing whitespace.
"""

from __future__ import annotations

import bisect
import re
from dataclasses import dataclass

import numpy as np

# A sentence ends at . ! ? (optionally followed by closing quotes/brackets) before whitespace;
# a line break always ends a unit, so lists, transcripts and code split on their own lines.
_BOUNDARY = re.compile(r"(?<=[.!?])([\"'”’)\]]*)\s+|\n\s*")
_BLANK_LINE = re.compile(r"\n[ \t\r\f\v]*\n")


@dataclass(frozen=True)
class SegmentConfig:
    """How documents are cut into units."""

    max_unit_tokens: int = 64
    """Longer sentences are cut at a word boundary near this many tokens."""
    min_unit_tokens: int = 8
    """Shorter pieces (titles, headers) join the next piece of the same paragraph, so a bare
    title never competes with the sentence it introduces."""

    def __post_init__(self) -> None:
        if self.max_unit_tokens < 4:
            raise ValueError(f"max_unit_tokens must be at least 4, got {self.max_unit_tokens}")
        if not 0 <= self.min_unit_tokens <= self.max_unit_tokens:
            raise ValueError("min_unit_tokens must lie in 0..max_unit_tokens")


def _raw_pieces(text: str) -> list[tuple[int, int, bool]]:
    """(start, end, ends_paragraph) for every sentence/line piece, whitespace-trimmed."""
    blank_lines = [m.start() for m in _BLANK_LINE.finditer(text)]
    pieces: list[tuple[int, int, bool]] = []
    start = 0
    for match in _BOUNDARY.finditer(text):
        # Closing quotes and brackets belong to the sentence they close.
        cut = match.start() + len(match.group(1) or "")
        next_blank = bisect.bisect_left(blank_lines, cut)
        ends_paragraph = next_blank < len(blank_lines) and blank_lines[next_blank] < match.end()
        _append_trimmed(text, start, cut, pieces, ends_paragraph)
        start = match.end()
    _append_trimmed(text, start, len(text), pieces, True)
    return pieces


def _append_trimmed(
    text: str, start: int, end: int, out: list[tuple[int, int, bool]], paragraph_end: bool
) -> None:
    piece = text[start:end]
    stripped = piece.strip()
    if not stripped:
        return
    lead = len(piece) - len(piece.lstrip())
    out.append((start + lead, start + lead + len(stripped), paragraph_end))


def segment(text: str, token_starts: np.ndarray, config: SegmentConfig | None = None) -> np.ndarray:
    """Cut ``text`` into units; returns an (n_units, 2) int64 array of [start, end) offsets.

    ``token_starts`` are the start offsets of the text's tokens, used to measure units in tokens.
    """
    config = config or SegmentConfig()
    units: list[tuple[int, int]] = []
    pending: tuple[int, int] | None = None
    for start, end, paragraph_end in _raw_pieces(text):
        if pending is not None:
            start = pending[0]
            pending = None
        for cut_start, cut_end in _cap(text, start, end, token_starts, config.max_unit_tokens):
            n_tokens = _count(token_starts, cut_start, cut_end)
            if n_tokens < config.min_unit_tokens and not paragraph_end and cut_end == end:
                pending = (cut_start, cut_end)
            else:
                units.append((cut_start, cut_end))
    if pending is not None:
        units.append(pending)
    return np.asarray(units, dtype=np.int64).reshape(-1, 2)


def _count(token_starts: np.ndarray, start: int, end: int) -> int:
    lo, hi = np.searchsorted(token_starts, [start, end])
    return int(hi - lo)


def _cap(
    text: str, start: int, end: int, token_starts: np.ndarray, max_tokens: int
) -> list[tuple[int, int]]:
    """Cut [start, end) into pieces of at most ``max_tokens`` tokens, at whitespace."""
    out: list[tuple[int, int]] = []
    while _count(token_starts, start, end) > max_tokens:
        first = int(np.searchsorted(token_starts, start))
        limit = int(token_starts[first + max_tokens])
        cut = max(text.rfind(" ", start + 1, limit), text.rfind("\n", start + 1, limit))
        if cut <= start:
            cut = limit
        if cut <= start:
            # Many tokens can share one start offset (NFKC expansions); step past it.
            later = token_starts[token_starts > start]
            cut = min(int(later[0]), end) if len(later) else end
        piece = text[start:cut].rstrip()
        if piece:
            out.append((start, start + len(piece)))
        rest = text[cut:end]
        start = cut + (len(rest) - len(rest.lstrip()))
    if start < end:
        out.append((start, end))
    return out
