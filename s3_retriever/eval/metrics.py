"""Retrieval and answer metrics, as pure functions.

Character ranges are ``(document index, start_char, end_char)``, half-open like Python slices.
Metrics that are undefined for an example (no gold evidence, a yes/no answer that no retrieval
can contain) return ``float('nan')``; :func:`aggregate` leaves those out of the mean.
"""

from __future__ import annotations

import math
import re
import string
from collections import Counter
from collections.abc import Iterable, Sequence
from typing import Protocol

__all__ = [
    "SpanLike",
    "aggregate",
    "answer_recall",
    "evidence_recall",
    "full_support",
    "hits_to_ranges",
    "normalize_answer",
    "qa_f1",
]

Range = tuple[int, int, int]

_PUNCTUATION = frozenset(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")
_NOT_RETRIEVABLE = frozenset({"yes", "no"})


class SpanLike(Protocol):
    """Anything with a document id and character offsets, such as a retriever's hit."""

    @property
    def doc_id(self) -> str: ...

    @property
    def start_char(self) -> int: ...

    @property
    def end_char(self) -> int: ...


def hits_to_ranges(hits: Iterable[SpanLike], doc_ids: Sequence[str]) -> list[Range]:
    """Convert hits to ``(document index, start, end)`` ranges using the example's ``doc_ids``.

    Raises KeyError for a hit whose document id is not in ``doc_ids``.
    """
    index_of = {doc_id: i for i, doc_id in enumerate(doc_ids)}
    ranges: list[Range] = []
    for hit in hits:
        if hit.doc_id not in index_of:
            raise KeyError(f"hit document id {hit.doc_id!r} is not among {list(doc_ids)!r}")
        ranges.append((index_of[hit.doc_id], hit.start_char, hit.end_char))
    return ranges


def _validated(ranges: Iterable[Range], name: str) -> list[Range]:
    checked = []
    for doc, start, end in ranges:
        if start < 0 or end < start:
            raise ValueError(f"{name} range {(doc, start, end)} has start < 0 or end < start")
        checked.append((doc, start, end))
    return checked


def _union(ranges: Iterable[Range]) -> dict[int, list[tuple[int, int]]]:
    """Merge ranges per document into sorted, disjoint, non-empty intervals."""
    by_doc: dict[int, list[tuple[int, int]]] = {}
    for doc, start, end in sorted(ranges):
        if end <= start:
            continue
        merged = by_doc.setdefault(doc, [])
        if merged and start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return by_doc


def _covered(doc: int, start: int, end: int, union: dict[int, list[tuple[int, int]]]) -> int:
    """Number of characters of ``[start, end)`` in ``doc`` that the union covers."""
    total = 0
    for lo, hi in union.get(doc, []):
        if lo >= end:
            break
        total += max(0, min(hi, end) - max(lo, start))
    return total


def evidence_recall(retrieved: Sequence[Range], gold: Sequence[Range]) -> float:
    """Fraction of gold characters covered by the union of the retrieved ranges.

    Overlapping gold ranges are counted once. Returns NaN when there is no gold evidence (an
    empty list or only empty ranges): recall is undefined there, and :func:`aggregate` skips it.
    """
    gold_union = _union(_validated(gold, "gold"))
    total = sum(hi - lo for spans in gold_union.values() for lo, hi in spans)
    if total == 0:
        return float("nan")
    retrieved_union = _union(_validated(retrieved, "retrieved"))
    covered = sum(
        _covered(doc, lo, hi, retrieved_union)
        for doc, spans in gold_union.items()
        for lo, hi in spans
    )
    return covered / total


def full_support(retrieved: Sequence[Range], gold: Sequence[Range], threshold: float = 0.5) -> bool:
    """True when every non-empty gold range is at least ``threshold`` covered by the retrieval.

    For multi-hop questions this says whether all pieces of evidence were found. Raises
    ValueError when there is no non-empty gold range, since "all of nothing" would read as a
    success; check ``example.gold`` first.
    """
    if not 0.0 < threshold <= 1.0:
        raise ValueError(f"threshold must be in (0, 1], got {threshold}")
    ranges = [g for g in _validated(gold, "gold") if g[2] > g[1]]
    if not ranges:
        raise ValueError("full_support needs at least one non-empty gold range")
    retrieved_union = _union(_validated(retrieved, "retrieved"))
    return all(
        _covered(doc, start, end, retrieved_union) >= threshold * (end - start)
        for doc, start, end in ranges
    )


def normalize_answer(text: str) -> str:
    """LongBench / SQuAD normalisation: lowercase, drop punctuation and articles, squash spaces."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCTUATION)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def answer_recall(retrieved_text: str, answers: Sequence[str], whole_words: bool = False) -> float:
    """1.0 if any normalised answer occurs in the normalised retrieved text, else 0.0.

    Answers that normalise to "yes" or "no" (HotpotQA comparison questions) or to nothing are
    not applicable: no passage has to contain the word, so finding it says nothing about
    retrieval. When no answer is applicable the result is NaN, which :func:`aggregate` skips.
    By default the match is a plain substring match, as in the usual answer-recall metric;
    ``whole_words=True`` requires the answer to start and end on word boundaries, so that
    "1" is not found inside "1945".
    """
    candidates = [
        norm
        for norm in (normalize_answer(a) for a in answers)
        if norm and norm not in _NOT_RETRIEVABLE
    ]
    if not candidates:
        return float("nan")
    haystack = normalize_answer(retrieved_text)
    if whole_words:
        haystack = f" {haystack} "
        return 1.0 if any(f" {norm} " in haystack for norm in candidates) else 0.0
    return 1.0 if any(norm in haystack for norm in candidates) else 0.0


def _token_f1(prediction_tokens: Sequence[str], truth_tokens: Sequence[str]) -> float:
    common = Counter(prediction_tokens) & Counter(truth_tokens)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision = same / len(prediction_tokens)
    recall = same / len(truth_tokens)
    return 2 * precision * recall / (precision + recall)


def qa_f1(prediction: str, answers: Sequence[str]) -> float:
    """LongBench's ``qa_f1_score``: token F1 after normalisation, the best over ``answers``.

    Raises ValueError when ``answers`` is empty.
    """
    if not answers:
        raise ValueError("qa_f1 needs at least one reference answer")
    prediction_tokens = normalize_answer(prediction).split()
    return max(_token_f1(prediction_tokens, normalize_answer(a).split()) for a in answers)


def aggregate(values: Iterable[float | bool]) -> dict[str, float]:
    """Mean of the values, ignoring NaN, with how many were counted and skipped.

    Returns ``{"mean": ..., "count": ..., "skipped": ...}`` (the counts are ints); the mean is
    NaN when nothing counts.
    Booleans (e.g. :func:`full_support` results) count as 0.0 / 1.0.
    """
    kept: list[float] = []
    skipped = 0
    for value in values:
        number = float(value)
        if math.isnan(number):
            skipped += 1
        else:
            kept.append(number)
    mean = math.fsum(kept) / len(kept) if kept else float("nan")
    return {"mean": mean, "count": len(kept), "skipped": skipped}
