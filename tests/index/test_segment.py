"""Unit segmentation: exact, trimmed, non-overlapping, complete and capped in tokens."""

from __future__ import annotations

import signal
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from s3_retriever.index.segment import SegmentConfig, segment
from s3_retriever.model.scan import tokenize

_ALPHABET = st.sampled_from(
    list("abcdefghij ABC  ...!?\n\n\t\x0b\r")
    + [
        "é",
        "e\u0301",
        "東",
        "京",
        "😀",
        "👍🏽",
        "م",
        "ر",
        "\u200d",
        "\u2028",
        "\u3000",
        "\xa0",
        "ß",
        "1",
    ]
)
_TEXTS = st.lists(_ALPHABET, max_size=300).map("".join)


def _token_starts(tokenizer: Any, text: str) -> np.ndarray:
    return tokenize(tokenizer, text).starts


def _count(starts: np.ndarray, start: int, end: int) -> int:
    lo, hi = np.searchsorted(starts, [start, end])
    return int(hi - lo)


def check_units(text: str, units: np.ndarray, starts: np.ndarray, max_tokens: int) -> None:
    """The invariants every segmentation must satisfy."""
    assert units.dtype == np.int64
    assert units.ndim == 2 and units.shape[1] == 2
    covered = np.zeros(len(text), bool)
    previous_end = 0
    for start, end in units.tolist():
        assert 0 <= start < end <= len(text)
        assert start >= previous_end, "units overlap or are out of order"
        piece = text[start:end]
        assert piece == piece.strip(), f"unit {piece!r} is not whitespace-trimmed"
        assert _count(starts, start, end) <= max_tokens, piece
        covered[start:end] = True
        previous_end = end
    missed = [i for i, ch in enumerate(text) if not ch.isspace() and not covered[i]]
    assert not missed, f"non-whitespace characters outside every unit: {missed[:10]}"


@settings(
    max_examples=150, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow]
)
@given(text=_TEXTS, max_tokens=st.integers(4, 20), min_tokens=st.integers(0, 4))
def test_segment_properties_with_real_tokens(
    tokenizer: Any, text: str, max_tokens: int, min_tokens: int
) -> None:
    """Random mixed-script text: invariants hold with the tokenizer's own token starts."""
    starts = _token_starts(tokenizer, text)
    config = SegmentConfig(max_unit_tokens=max_tokens, min_unit_tokens=min_tokens)
    check_units(text, segment(text, starts, config), starts, max_tokens)


@settings(max_examples=150, deadline=None, database=None)
@given(text=_TEXTS, max_tokens=st.integers(4, 12))
def test_segment_properties_one_token_per_character(text: str, max_tokens: int) -> None:
    """With one token per character, caps cut often and the invariants still hold."""
    starts = np.arange(len(text), dtype=np.int64)
    config = SegmentConfig(max_unit_tokens=max_tokens, min_unit_tokens=2)
    check_units(text, segment(text, starts, config), starts, max_tokens)


def test_segment_corpus_documents(tokenizer: Any, corpus: dict[str, str]) -> None:
    """Every fixture document, Unicode-heavy one included, segments with exact offsets."""
    for text in corpus.values():
        starts = _token_starts(tokenizer, text)
        units = segment(text, starts, SegmentConfig(max_unit_tokens=16, min_unit_tokens=4))
        check_units(text, units, starts, 16)
        assert len(units) > 1


def test_segment_splits_sentences_and_lines(tokenizer: Any) -> None:
    """Sentences end at . ! ? before whitespace, and every line break ends a unit."""
    text = "Rivers flow to the sea. Do they ever stop? Never!\nA list item\n  Another line"
    units = segment(text, _token_starts(tokenizer, text), SegmentConfig(min_unit_tokens=0))
    assert [text[s:e] for s, e in units.tolist()] == [
        "Rivers flow to the sea.",
        "Do they ever stop?",
        "Never!",
        "A list item",
        "Another line",
    ]


def test_segment_keeps_closing_quotes_with_sentence(tokenizer: Any) -> None:
    """A closing quote or bracket after the full stop stays in the sentence."""
    text = 'She said "go home." Then (she left.) He stayed.'
    units = segment(text, _token_starts(tokenizer, text), SegmentConfig(min_unit_tokens=0))
    assert [text[s:e] for s, e in units.tolist()] == [
        'She said "go home."',
        "Then (she left.)",
        "He stayed.",
    ]


@settings(max_examples=200, deadline=None, database=None)
@given(
    text=st.lists(
        st.sampled_from(["Yes.", "No!", "Why?", '"', "'", ")", "]", "”", " ", "\n", "word"]),
        max_size=30,
    ).map("".join)
)
def test_segment_covers_closing_quotes(text: str) -> None:
    """Closing quotes and brackets after a sentence end belong to some unit."""
    starts = np.arange(len(text), dtype=np.int64)
    check_units(text, segment(text, starts, SegmentConfig(min_unit_tokens=0)), starts, 64)


def test_segment_joins_short_title_to_next_piece(tokenizer: Any) -> None:
    """A short title joins the sentence it introduces; a short paragraph end stays alone."""
    text = "Budget Report\nThe council approved the new hospital budget on Tuesday.\n\nEnd."
    starts = _token_starts(tokenizer, text)
    units = segment(text, starts, SegmentConfig(max_unit_tokens=64, min_unit_tokens=16))
    pieces = [text[s:e] for s, e in units.tolist()]
    assert pieces == [
        "Budget Report\nThe council approved the new hospital budget on Tuesday.",
        "End.",
    ]


def test_segment_caps_long_sentence_at_spaces(tokenizer: Any) -> None:
    """A sentence longer than max_unit_tokens is cut at spaces into pieces within the cap."""
    text = " ".join(["alpha", "beta", "gamma", "delta"] * 12) + "."
    starts = _token_starts(tokenizer, text)
    units = segment(text, starts, SegmentConfig(max_unit_tokens=10, min_unit_tokens=0))
    assert len(units) > 3
    check_units(text, units, starts, 10)
    for start, end in units.tolist():
        assert start == 0 or text[start - 1] == " "
        assert end == len(text) or text[end] == " "


def test_segment_unicode_offsets_are_code_points(tokenizer: Any) -> None:
    """Offsets index Python code points: combining marks, emoji and CJK come back verbatim."""
    text = (
        "Cafe\u0301 au lait. 東京は首都です。 Family 👨\u200d👩\u200d👧 here!\u2028مرحبا بالعالم."
    )
    starts = _token_starts(tokenizer, text)
    units = segment(text, starts, SegmentConfig(min_unit_tokens=0))
    pieces = [text[s:e] for s, e in units.tolist()]
    assert pieces[0] == "Cafe\u0301 au lait."
    assert "Family 👨\u200d👩\u200d👧 here!" in "".join(pieces)
    assert pieces[-1] == "مرحبا بالعالم."
    check_units(text, units, starts, 64)


@pytest.mark.parametrize("text", ["", "   ", "\n\n\t\x0b ", "\u3000\u2028"])
def test_segment_blank_text_has_no_units(tokenizer: Any, text: str) -> None:
    """Empty or whitespace-only text yields an empty (0, 2) array."""
    units = segment(text, _token_starts(tokenizer, text))
    assert units.shape == (0, 2)


def test_segment_config_validation() -> None:
    """max_unit_tokens < 4 and min > max are refused."""
    with pytest.raises(ValueError):
        SegmentConfig(max_unit_tokens=3)
    with pytest.raises(ValueError):
        SegmentConfig(max_unit_tokens=8, min_unit_tokens=9)


@contextmanager
def _deadline(seconds: float) -> Iterator[None]:
    def expire(*_args: Any) -> None:
        raise TimeoutError(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def test_segment_terminates_when_many_tokens_share_a_start() -> None:
    """A character that expands into more tokens than the cap still segments, without hanging."""
    text = "ab \ufdfa cd"
    starts = np.array([0, 1, 2] + [3] * 33 + [4, 5, 6], dtype=np.int64)
    with _deadline(1.0):
        units = segment(text, starts, SegmentConfig(max_unit_tokens=8, min_unit_tokens=0))
    covered = "".join(text[s:e] for s, e in units.tolist())
    assert covered.replace(" ", "") == text.replace(" ", "")
