"""The in-context attention re-ranker on the tiny model: prompt layout, cache, calibration."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch

from s3_retriever.eval.baselines import BM25Baseline
from s3_retriever.eval.harness import EvalSettings, run_eval
from s3_retriever.eval.methods import parse_methods, rerank_method
from s3_retriever.eval.rerank import CALIBRATION_QUERY, AttentionReranker
from s3_retriever.testing import RETRIEVAL_HEADS
from tests.eval.fixtures import hotpot_row, write_jsonl

CHUNKS = [
    "The harbour froze in the winter of 1903.",
    "Bees make honey from the nectar of flowers.",
    "The old mill by the river ground wheat for the village.",
]


def _reranker(loaded: Any, candidates: int = 30) -> AttentionReranker:
    bm25 = BM25Baseline()
    reranker = AttentionReranker(loaded, RETRIEVAL_HEADS, bm25, candidates)
    reranker.add_documents(CHUNKS)
    return reranker


def test_method_names_carry_the_candidate_count() -> None:
    assert rerank_method("rerank") == (False, 30)
    assert rerank_method("rerank:20") == (False, 20)
    assert rerank_method("rerank-all:5") == (True, 5)
    assert rerank_method("bm25") is None
    assert parse_methods("rerank:12,bm25") == ["rerank:12", "bm25"]
    for bad in ("rerank:0", "rerank:x"):
        with pytest.raises(ValueError, match="positive integer"):
            parse_methods(bad)


def test_prompt_spans_hold_exactly_each_chunks_tokens(loaded: Any) -> None:
    reranker = _reranker(loaded)
    ids, spans = reranker._prompt(CHUNKS)
    encode = loaded.tokenizer
    for (start, end), chunk in zip(spans, CHUNKS, strict=True):
        assert ids[start:end] == encode(chunk, add_special_tokens=False)["input_ids"]


def test_cached_prompt_gives_the_attention_of_one_whole_forward(loaded: Any) -> None:
    """Reading the question on top of the cached passages equals running the prompt whole."""
    from transformers import DynamicCache

    reranker = _reranker(loaded)
    ids, spans = reranker._prompt(CHUNKS)
    question = " Which river had a mill?"
    query_ids = loaded.tokenizer(question, add_special_tokens=False)["input_ids"]
    model = loaded.model
    previous = model.config._attn_implementation
    model.set_attn_implementation("eager")
    try:
        with torch.inference_mode():
            whole = model(input_ids=torch.tensor([ids + query_ids]), output_attentions=True)
    finally:
        model.set_attn_implementation(previous)
    expected = []
    for start, end in spans:
        total = 0.0
        for layer, head in RETRIEVAL_HEADS:
            attention = whole.attentions[layer][0, head, len(ids) :, : len(ids)].float()
            total += float(attention.mean(dim=0)[start:end].sum())
        expected.append(total)
    cache = DynamicCache()
    with torch.inference_mode():
        reranker._forward(torch.tensor([ids]), cache, capture=False)
        got = reranker._question_mass(question.strip(), cache, len(ids), spans, "cpu")
    assert got == pytest.approx(expected, rel=1e-4, abs=1e-6)


def test_calibration_removes_what_the_content_free_query_attends_to(loaded: Any) -> None:
    reranker = _reranker(loaded)
    # Against itself the calibration leaves nothing; this also fails if the question's
    # tokens stayed in the cache when the calibration query is read.
    assert reranker.chunk_scores(CALIBRATION_QUERY, CHUNKS) == pytest.approx([0, 0, 0], abs=1e-6)
    scores = reranker.chunk_scores("Which river had a mill?", CHUNKS)
    assert scores.shape == (3,) and not (scores == 0).all()


def test_only_bm25_candidates_are_ranked(loaded: Any) -> None:
    reranker = _reranker(loaded, candidates=1)
    ranked = reranker.rank_units("river mill")
    assert [unit for unit, _ in ranked] == [2]
    assert reranker.rank_units("zzz unseen") == []


def test_rerank_in_the_harness_reports_first_query_time(
    tmp_path: Path, make_retriever: Any
) -> None:
    rows = [hotpot_row(q) for q in range(3)]
    write_jsonl(tmp_path / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl", rows)
    settings = EvalSettings(
        tmp_path,
        ["hotpotqa-corpus"],
        ["rerank:4", "bm25"],
        budgets=[16, 64],
        n=2,
        show_progress=False,
    )
    report = run_eval(settings, retriever=make_retriever())
    cells = report["results"]["default"]["hotpotqa-corpus"]
    assert report["tasks"]["hotpotqa-corpus"]["doc_sets"] == 1
    for method in ("rerank:4", "bm25"):
        assert cells[method]["first_query_seconds"] > 0
        small = cells[method]["budgets"]["16"]["evidence_recall"]
        assert 0.0 <= small <= cells[method]["budgets"]["64"]["evidence_recall"] <= 1.0
