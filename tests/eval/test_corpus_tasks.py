"""Corpus tasks and 128-token chunking: one document per passage or meeting."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from s3_retriever.eval.baselines import BM25Baseline
from s3_retriever.eval.chunking import token_chunks, token_splitter
from s3_retriever.eval.corpus_tasks import load_hotpotqa_corpus, load_qmsum_corpus
from tests.eval.fixtures import hotpot_row, write_jsonl

SHARED = {"id": "s", "title": "Shared", "paragraph_text": "A paragraph two questions cite."}


@pytest.fixture
def hotpot_dir(tmp_path: Path) -> Path:
    rows = [hotpot_row(0, dict(SHARED, is_supporting=True)), hotpot_row(1, SHARED)]
    write_jsonl(tmp_path / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl", rows)
    return tmp_path


def test_hotpotqa_corpus_has_each_paragraph_once_and_whole_documents_as_gold(
    hotpot_dir: Path,
) -> None:
    examples = load_hotpotqa_corpus(hotpot_dir, n=2)
    documents = examples[0].documents
    assert examples[1].documents is documents  # one corpus, indexed once
    assert len(documents) == 3 + 3 + 1
    assert documents.count("Shared\nA paragraph two questions cite.") == 1
    first, second = examples
    assert [documents[d] for d, _, _ in first.gold] == [
        "Title 0-0\nParagraph 0 of question 0 has exactly eight words here.",
        "Title 0-1\nParagraph 1 of question 0 has exactly eight words here.",
        "Shared\nA paragraph two questions cite.",
    ]
    assert all(start == 0 and end == len(documents[d]) for d, start, end in first.gold)
    assert len(second.gold) == 2  # the shared paragraph supports only question 0
    assert first.metadatas is not None and first.metadatas[0]["title"] == "Title 0-0"
    assert len(set(first.doc_ids)) == len(documents)
    assert [e.qid for e in load_hotpotqa_corpus(hotpot_dir, n=5, skip=1)] == ["q1"]


def test_qmsum_corpus_puts_every_meeting_in_one_index(tmp_path: Path) -> None:
    def meeting(name: str) -> dict[str, Any]:
        return {
            "specific_query_list": [
                {"query": f"What did {name} say?", "answer": "x", "relevant_text_span": [[1, 1]]}
            ],
            "meeting_transcripts": [
                {"speaker": "A", "content": "Opening."},
                {"speaker": name, "content": f"{name} speaks here."},
            ],
        }

    write_jsonl(tmp_path / "qmsum_val" / "val.jsonl", [meeting("B"), meeting("C")])
    examples = load_qmsum_corpus(tmp_path, n=10)
    assert len(examples) == 2 and len(examples[0].documents) == 2
    for meeting_index, example in enumerate(examples):
        ((doc, start, end),) = example.gold
        assert doc == meeting_index
        assert example.documents[doc][start:end].endswith("speaks here.")
    assert examples[1].metadatas == [
        {"meeting": 0, "source": "qmsum"},
        {"meeting": 1, "source": "qmsum"},
    ]


def _word_offsets(text: str) -> list[tuple[int, int]]:
    """Whitespace 'tokens' with their character ranges: a stand-in tokenizer."""
    import re

    return [(m.start(), m.end()) for m in re.finditer(r"\S+", text)]


def test_token_chunks_are_fixed_windows_inside_one_document() -> None:
    text = " ".join(f"w{i}" for i in range(10)) + "\n"
    chunks = token_chunks(text, _word_offsets, size=4)
    assert [text[s:e] for s, e in chunks] == ["w0 w1 w2 w3", "w4 w5 w6 w7", "w8 w9"]
    with pytest.raises(ValueError, match="at least 1"):
        token_chunks(text, _word_offsets, size=0)


def test_baselines_rank_token_windows_that_never_cross_documents() -> None:
    bm25 = BM25Baseline(splitter=token_splitter(_word_offsets, 3))
    bm25.add_documents(["alpha beta gamma delta", "epsilon zeta"])
    assert bm25.store.units == [(0, 0, 16), (0, 17, 22), (1, 0, 12)]
    count = len  # characters as the budget unit: enough for this check
    hits = bm25.retrieve("delta", 100, count)
    assert [(h.doc_id, h.text) for h in hits] == [("0", "delta")]
