"""Corpus tasks: many short documents in one index, every question asked over all of them.

This is how LangChain and LlamaIndex applications use a retriever: one document per file,
page or passage. The per-document tasks of :mod:`s3_retriever.eval.data` give each question
its own haystack; here all questions of a task share one list of documents, so the harness
indexes it once, and each document is its own ``add_documents`` entry with its metadata.

- :func:`load_hotpotqa_corpus`: every distinct paragraph of the 500 HotpotQA questions
  (``title\\ntext``) is one document; gold is the question's supporting paragraphs, whole.
- :func:`load_qmsum_corpus`: every meeting of the QMSum validation split is one document;
  gold is the query's turn ranges inside its own meeting.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from s3_retriever.eval.data import (
    HOTPOTQA_FILE,
    QMSUM_FILE,
    EvalExample,
    _answers_of,
    _paragraphs_of,
    _read_jsonl,
    _render_turns,
    _require_file,
    _turn_span_gold,
)

__all__ = ["load_hotpotqa_corpus", "load_qmsum_corpus"]


def load_hotpotqa_corpus(data_dir: str | Path, n: int, skip: int = 0) -> list[EvalExample]:
    """HotpotQA questions ``skip .. skip + n - 1`` over one corpus of all 500 questions' paragraphs.

    A paragraph that occurs under several questions (same title and text) is one document, so
    each gold paragraph is in the corpus exactly once. A document is ``{title}\\n{text}`` with
    metadata ``{"title": ..., "source": "hotpotqa"}``; gold ranges cover whole documents.
    Every example holds the same ``documents`` list, so the corpus is indexed once.
    """
    if n < 0 or skip < 0:
        raise ValueError(f"n and skip must be >= 0, got {n} and {skip}")
    rows = list(_read_jsonl(_require_file(data_dir, HOTPOTQA_FILE)))
    index_of: dict[tuple[str, str], int] = {}
    documents: list[str] = []
    metadatas: list[dict[str, Any]] = []
    supporting: list[list[int]] = []
    for row in rows:
        gold_docs = []
        for para, is_supporting in _paragraphs_of(row):
            if para.key not in index_of:
                index_of[para.key] = len(documents)
                documents.append(f"{para.title}\n{para.text}")
                metadatas.append({"title": para.title, "source": "hotpotqa"})
            if is_supporting:
                gold_docs.append(index_of[para.key])
        supporting.append(gold_docs)
    doc_ids = [f"hotpotqa-paragraph:{i}" for i in range(len(documents))]
    examples = []
    for index in range(skip, min(skip + n, len(rows))):
        row = rows[index]
        examples.append(
            EvalExample(
                qid=str(row["question_id"]),
                question=row["question_text"],
                answers=_answers_of(row),
                documents=documents,
                doc_ids=doc_ids,
                gold=[(d, 0, len(documents[d])) for d in sorted(supporting[index])],
                task="hotpotqa-corpus",
                metadatas=metadatas,
            )
        )
    return examples


def load_qmsum_corpus(data_dir: str | Path, n: int, skip: int = 0) -> list[EvalExample]:
    """QMSum specific queries ``skip .. skip + n - 1`` (file order) over all meetings at once.

    Each meeting is one document rendered as in :func:`s3_retriever.eval.data.load_qmsum`
    (``Speaker: content`` lines), with metadata ``{"meeting": i, "source": "qmsum"}``; a query's
    gold is its turn ranges in its own meeting, so the other meetings are distractors.
    """
    if n < 0 or skip < 0:
        raise ValueError(f"n and skip must be >= 0, got {n} and {skip}")
    rows = list(_read_jsonl(_require_file(data_dir, QMSUM_FILE)))
    rendered = [_render_turns(row["meeting_transcripts"]) for row in rows]
    documents = [text for text, _ in rendered]
    doc_ids = [f"qmsum:{i}" for i in range(len(rows))]
    metadatas: list[dict[str, Any]] = [{"meeting": i, "source": "qmsum"} for i in range(len(rows))]
    examples: list[EvalExample] = []
    for meeting, row in enumerate(rows):
        line_ranges = rendered[meeting][1]
        for query_index, query in enumerate(row.get("specific_query_list", [])):
            qid = f"qmsum:{meeting}:{query_index}"
            spans = _turn_span_gold(query.get("relevant_text_span", []), line_ranges, qid)
            examples.append(
                EvalExample(
                    qid=qid,
                    question=query["query"],
                    answers=[query["answer"]],
                    documents=documents,
                    doc_ids=doc_ids,
                    gold=[(meeting, start, end) for _, start, end in spans],
                    task="qmsum-corpus",
                    metadatas=metadatas,
                )
            )
    return examples[skip : skip + n]
