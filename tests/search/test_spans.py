"""Span growth: how a peak unit widens under ``min_span_tokens`` and ``within_paragraph``."""

from __future__ import annotations

import re

import numpy as np

from s3_retriever.config import RetrieverConfig
from s3_retriever.index.corpus import Corpus
from s3_retriever.search.spans import grow

# Three paragraphs of two sentences each; every word is one token below.
TEXT = (
    "Alpha one two three. Alpha four five six.\n\n"
    "Beta one two three. Beta four five six.\n\n"
    "Gamma one two three. Gamma four five six."
)


def _corpus() -> Corpus:
    words = [m.end() for m in re.finditer(r"\S+", TEXT)]
    sentences = [(m.start(), m.end()) for m in re.finditer(r"[A-Z][^.]*\.", TEXT)]
    corpus = Corpus()
    corpus.append("d", TEXT, {}, np.asarray(words), np.asarray(sentences, dtype=np.int64))
    return corpus


def test_growth_crosses_paragraphs_by_default() -> None:
    corpus = _corpus()
    counts = corpus.unit_tokens[:, 1] - corpus.unit_tokens[:, 0]
    # Unit 2 (first Beta sentence) with its left neighbour scoring higher than its right one.
    scores = np.asarray([0.0, 5.0, 9.0, 1.0, 0.0, 0.0])
    assert grow(2, corpus, scores, min_tokens=8, counts=counts) == [1, 2]


def test_growth_within_paragraph_takes_the_paragraph_neighbour() -> None:
    corpus = _corpus()
    counts = corpus.unit_tokens[:, 1] - corpus.unit_tokens[:, 0]
    scores = np.asarray([0.0, 5.0, 9.0, 1.0, 0.0, 0.0])
    assert grow(2, corpus, scores, 8, counts, within_paragraph=True) == [2, 3]
    # A span that fills its paragraph stops there, short of min_tokens.
    assert grow(2, corpus, scores, 100, counts, within_paragraph=True) == [2, 3]
    assert grow(3, corpus, scores, 100, counts, within_paragraph=True) == [2, 3]
    assert grow(5, corpus, scores, 100, counts, within_paragraph=True) == [4, 5]
    assert grow(2, corpus, scores, 100, counts) == [0, 1, 2, 3, 4, 5]


def test_manifest_written_before_the_setting_loads_with_the_default() -> None:
    saved = RetrieverConfig().to_dict()
    del saved["spans"]["within_paragraph"]
    assert RetrieverConfig.from_dict(saved).spans.within_paragraph is True
