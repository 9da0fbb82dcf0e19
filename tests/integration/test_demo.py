"""The demo (scripts/demo.sh) and the README quickstart, run in-process with the bundled model."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.integration.conftest import requires_model

GPL = Path(__file__).resolve().parents[2] / "examples" / "data" / "gpl-3.0.txt"
DEMO_QUESTION = "Am I allowed to charge a fee for giving someone a copy?"
ANSWER = "You may charge any price or no price for each copy that you convey"


@requires_model
@pytest.mark.model
def test_demo_question_gets_its_answer_span_first() -> None:
    from s3_retriever import S3Retriever

    retriever = S3Retriever.from_pretrained()
    retriever.add_documents([GPL.read_text(encoding="utf-8")], ids=["gpl-3"])
    # What scripts/demo.sh asks: best first, 256 tokens, the model's attention alone.
    hits = retriever.retrieve(DEMO_QUESTION, token_budget=256, mode="s3", order="score")
    assert ANSWER in hits[0].text
    assert hits[0].relevance == pytest.approx(1.0)
    # The README quickstart: best first, no span without evidence.
    quick = retriever.retrieve("Can I charge for copies?", token_budget=256, order="score")
    assert [h.score for h in quick] == sorted((h.score for h in quick), reverse=True)
    assert all(h.relevance >= retriever.config.spans.min_relevance for h in quick)
    assert all(h.text.strip() != "Preamble" for h in quick)
