"""The paraphrase needles: the word-overlap property, and planting into real text."""

from __future__ import annotations

from pathlib import Path

import pytest

from s3_retriever.eval.paraphrase_needles import (
    DEPTHS,
    NEEDLES,
    STOP_WORDS,
    _plant,
    content_words,
    load_needles,
    shared_content_words,
)


def test_every_question_shares_at_most_one_content_word_with_its_fact() -> None:
    assert len(NEEDLES) >= 20
    offending = {
        question: shared
        for fact, question in NEEDLES
        if len(shared := shared_content_words(fact, question)) > 1
    }
    assert offending == {}


def test_the_overlap_check_sees_inflections_and_ignores_stop_words() -> None:
    # The check must be able to fail: inflected forms count as one shared word.
    assert shared_content_words("The keeper painted the towers.", "Who paints a tower?") == {
        "paint",
        "tower",
    }
    assert content_words("What was it, and why?") == set()
    assert {"the", "what", "why", "did"} <= STOP_WORDS
    assert content_words("Odile's key") == {"odile", "key"}


def test_needles_are_distinct() -> None:
    facts = [fact for fact, _ in NEEDLES]
    questions = [question for _, question in NEEDLES]
    assert len(set(facts)) == len(facts) and len(set(questions)) == len(questions)


def test_plant_puts_each_needle_in_its_own_block_at_its_depth() -> None:
    haystack = "\n".join(f"line {i} of the meeting" for i in range(100))
    needles = [(0.0, "FIRST needle."), (0.5, "MIDDLE needle."), (1.0, "LAST needle.")]
    text, spans = _plant(haystack, needles, "\n")
    assert [text[start:end] for start, end in spans] == [n for _, n in needles]
    lines = text.split("\n")
    # A needle goes at the last separator before its depth, so 1.0 lands before the last line.
    assert lines[0] == "FIRST needle." and lines[-2] == "LAST needle."
    assert abs(lines.index("MIDDLE needle.") - 51) <= 1
    # Removing the needles gives the haystack back: nothing else was changed.
    assert [line for line in lines if "needle" not in line] == haystack.split("\n")


@pytest.mark.data
def test_needles_in_real_text(shared_data: Path) -> None:
    examples = load_needles(shared_data, n=len(NEEDLES))
    assert len(examples) == len(NEEDLES)
    for example, (fact, question) in zip(examples, NEEDLES, strict=True):
        ((doc, start, end),) = example.gold
        assert example.documents[doc][start:end] == fact
        assert example.question == question
        assert example.documents[doc].count(fact) == 1
    sources = {e.qid.split(":")[2] for e in examples}
    assert sources == {"qmsum", "hotpotqa"}
    depths = {(e.qid.split(":")[2], float(e.qid.rsplit(":", 1)[1])) for e in examples}
    assert depths == {(s, d) for s in sources for d in DEPTHS}
    # The evaluation window starts at a haystack boundary and keeps the tuning needles out.
    held_out = load_needles(shared_data, n=24, skip=8)
    assert [e.qid for e in held_out] == [e.qid for e in examples[8:]]
