"""RetrieverEvaluator (hit rate, MRR) on HotpotQA questions with the bundled model.

Each question comes with ten paragraphs, two of them supporting (the distractor setting). All
paragraphs are indexed once as Documents; a metadata filter restricts each question to its own
ten, and spans are scored at document level (a span hits when its paragraph is supporting).
Skipped when ``../shared/data`` or the bundled model is unavailable.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from llama_index.core.evaluation import RetrieverEvaluator
from llama_index.core.schema import Document
from llama_index.core.vector_stores import ExactMatchFilter, MetadataFilters

from llama_index.retrievers.s3 import S3AttentionRetriever, SourceDocuments

pytestmark = [pytest.mark.model, pytest.mark.data]

HOTPOTQA = Path("hotpotqa_dev_distractor") / "hotpotqa_dev_subsampled.jsonl"
N_QUESTIONS = 10


def _data_file() -> Path:
    root = os.environ.get("S3_EVAL_DATA")
    project = Path(__file__).resolve().parents[3]
    data_dir = Path(root) if root else project.parent / "shared" / "data"
    path = data_dir / HOTPOTQA
    if not path.is_file():
        pytest.skip(f"HotpotQA data not found at {path}")
    return path


def load_labelled_set(path: Path, n: int) -> tuple[list[Document], list[dict[str, Any]]]:
    """The first ``n`` questions: their paragraphs as Documents, and queries with expected ids."""
    documents: list[Document] = []
    queries: list[dict[str, Any]] = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if len(queries) == n:
                break
            row = json.loads(line)
            qid = row["question_id"]
            expected = []
            for context in row["contexts"]:
                doc_id = f"{qid}/{context['id']}"
                text = f"{context['title'].strip()}\n{context['paragraph_text'].strip()}"
                documents.append(Document(text=text, id_=doc_id, metadata={"question": qid}))
                if context.get("is_supporting"):
                    expected.append(doc_id)
            queries.append({"qid": qid, "query": row["question_text"], "expected": expected})
    return documents, queries


async def test_retriever_evaluator_hit_rate_and_mrr(pretrained_kwargs: dict[str, Any]) -> None:
    documents, queries = load_labelled_set(_data_file(), N_QUESTIONS)
    retriever = S3AttentionRetriever.from_documents(
        documents, retriever_kwargs=pretrained_kwargs, similarity_top_k=4, token_budget=512
    )
    evaluator = RetrieverEvaluator.from_metric_names(
        ["hit_rate", "mrr"], retriever=retriever, node_postprocessors=[SourceDocuments()]
    )
    results = []
    for item in queries:
        retriever.filters = MetadataFilters(
            filters=[ExactMatchFilter(key="question", value=item["qid"])]
        )
        result = await evaluator.aevaluate(query=item["query"], expected_ids=item["expected"])
        own = {d.id_ for d in documents if d.metadata["question"] == item["qid"]}
        assert result.retrieved_ids and set(result.retrieved_ids) <= own
        results.append(result.metric_vals_dict)
    hit_rate = sum(r["hit_rate"] for r in results) / len(results)
    mrr = sum(r["mrr"] for r in results) / len(results)
    print(f"HotpotQA x{len(results)}: hit_rate={hit_rate:.3f} mrr={mrr:.3f}")
    assert 0.0 <= mrr <= hit_rate <= 1.0
    assert hit_rate >= 0.7
    assert mrr >= 0.5
