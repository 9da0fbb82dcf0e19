"""Evaluation: data sets with gold evidence, metrics, and baseline retrievers."""

from s3_retriever.eval.baselines import (
    BM25Baseline,
    DenseBaseline,
    Hit,
    RRFBaseline,
    fill_budget,
    split_units,
)
from s3_retriever.eval.data import (
    DATA_DIR_ENV,
    LEVAL_TASKS,
    EvalExample,
    default_data_dir,
    load_hotpotqa_haystacks,
    load_kv_retrieval,
    load_leval,
    load_qmsum,
)
from s3_retriever.eval.metrics import (
    SpanLike,
    aggregate,
    answer_recall,
    evidence_recall,
    full_support,
    hits_to_ranges,
    normalize_answer,
    qa_f1,
)

__all__ = [
    "DATA_DIR_ENV",
    "LEVAL_TASKS",
    "BM25Baseline",
    "DenseBaseline",
    "EvalExample",
    "Hit",
    "RRFBaseline",
    "SpanLike",
    "aggregate",
    "answer_recall",
    "default_data_dir",
    "evidence_recall",
    "fill_budget",
    "full_support",
    "hits_to_ranges",
    "load_hotpotqa_haystacks",
    "load_kv_retrieval",
    "load_leval",
    "load_qmsum",
    "normalize_answer",
    "qa_f1",
    "split_units",
]
