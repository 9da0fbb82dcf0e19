"""Clustered exact search against reading every key, on one real index, in one run.

Both searches score the same questions over the same index (HotpotQA haystacks, each question
asked over all of them): the full computation reads every stored key, the clustered search reads
about ``positions_per_row`` keys per question row (s3_retriever/search/clustered.py). Reported per
``positions_per_row``:

- search time, and its ratio to the full search measured in the same run;
- agreement: the share of the full search's retrieved characters (S3-Pure, 1,024-token budget)
  that the clustered search retrieves too;
- evidence recall of both at that budget, against the question's gold passages;
- the share of the full search's top-1,000 positions in the clustered search's top 1,000.

The clusters are built once per index (timed apart, ``cluster_build_s``).

    python -m benchmarks.cluster_search --data ../shared/data --haystacks 20 --threads 1 \
        --per-row 1024,2048,4096,8192,16384
"""

from __future__ import annotations

import argparse
import dataclasses
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, haystacks, quiet, quiet_retriever
from s3_retriever import S3Retriever, ScoringConfig
from s3_retriever.eval.data import EvalExample
from s3_retriever.eval.metrics import evidence_recall, hits_to_ranges
from s3_retriever.index.clusters import key_clusters

BUDGET = 1024
TOP_POSITIONS = 1000


def _search_seconds(retriever: S3Retriever, vectors: Any) -> tuple[float, np.ndarray]:
    started = time.perf_counter()
    scores = retriever.score_question_vectors(vectors)
    return time.perf_counter() - started, scores


def _characters(hits: Any) -> set[tuple[str, int]]:
    return {(h.doc_id, c) for h in hits for c in range(h.start_char, h.end_char)}


def _own_recall(hits: Any, example: EvalExample) -> float:
    own = [h for h in hits if h.doc_id in set(example.doc_ids)]
    return evidence_recall(hits_to_ranges(own, example.doc_ids), example.gold)


def _mean_recall(hits: list[Any], examples: list[EvalExample]) -> float:
    return float(np.mean([_own_recall(h, e) for h, e in zip(hits, examples, strict=True)]))


def _measure(
    retriever: S3Retriever, examples: list[EvalExample], scoring: ScoringConfig
) -> dict[str, Any]:
    retriever.config = retriever.config.replace(scoring=scoring)
    times, scores, hits = [], [], []
    for example in examples:
        vectors = retriever.question_vectors(example.question)
        seconds, position_scores = _search_seconds(retriever, vectors)
        times.append(seconds)
        scores.append(position_scores)
        hits.append(retriever.retrieve(example.question, token_budget=BUDGET, mode="s3"))
    return {"times": times, "scores": scores, "hits": hits}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--haystacks", type=int, default=20, help="3,000-word haystacks indexed")
    parser.add_argument("--per-row", default="1024,4096,16384", help="positions_per_row values")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--index", default=None, help="reuse (or write) the scanned index here")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    examples = haystacks(data_dir(args.data), n=args.haystacks)
    if args.index and Path(args.index).exists():
        retriever = quiet(S3Retriever.load(args.index))
    else:
        retriever = quiet_retriever()
        for example in examples:
            retriever.add_documents(example.documents, ids=example.doc_ids)
        if args.index:
            retriever.save(args.index)
    base = ScoringConfig(cluster_search_above=None)
    _measure(retriever, examples[:1], base)  # warm-up: query cache, first allocations
    full = _measure(retriever, examples, base)
    full_chars = [_characters(h) for h in full["hits"]]
    full_top = [set(np.argsort(-s)[:TOP_POSITIONS].tolist()) for s in full["scores"]]
    full_ms = 1000 * float(np.median(full["times"]))
    rows: list[dict[str, Any]] = []
    started = time.perf_counter()
    for store in retriever.index.key_stores.values():
        key_clusters(store)
    cluster_build_s = time.perf_counter() - started
    for per_row in (int(b) for b in args.per_row.split(",")):
        scoring = dataclasses.replace(base, cluster_search_above=0, positions_per_row=per_row)
        _measure(retriever, examples[:1], scoring)  # warm-up
        fast = _measure(retriever, examples, scoring)
        agree = [
            len(_characters(h) & ref) / max(len(ref), 1)
            for h, ref in zip(fast["hits"], full_chars, strict=True)
        ]
        top_overlap = [
            len(set(np.argsort(-s)[:TOP_POSITIONS].tolist()) & ref) / TOP_POSITIONS
            for s, ref in zip(fast["scores"], full_top, strict=True)
        ]
        fast_ms = 1000 * float(np.median(fast["times"]))
        rows.append(
            {
                "positions_per_row": per_row,
                "search_ms": fast_ms,
                "full_search_ms": full_ms,
                "speedup": full_ms / fast_ms,
                "agreement": float(np.mean(agree)),
                "min_agreement": float(np.min(agree)),
                "top_positions_overlap": float(np.mean(top_overlap)),
                "recall": float(
                    np.mean(
                        [_own_recall(h, e) for h, e in zip(fast["hits"], examples, strict=False)]
                    )
                ),
                "full_recall": float(
                    np.mean(
                        [_own_recall(h, e) for h, e in zip(full["hits"], examples, strict=False)]
                    )
                ),
            }
        )
    payload = {
        "settings": {**vars(args), "budget": BUDGET, "mode": "s3"},
        "tokens": retriever.index.corpus.n_positions,
        "cluster_build_s": cluster_build_s,
        "questions": len(examples),
        "rows": rows,
    }
    table = markdown_table(
        [
            "keys read per row",
            "search ms",
            "full search ms",
            "speed-up",
            "agreement @1024",
            "worst question",
            f"top-{TOP_POSITIONS} overlap",
            "recall @1024",
            "full recall @1024",
        ],
        [
            [
                r["positions_per_row"],
                f"{r['search_ms']:.1f}",
                f"{r['full_search_ms']:.1f}",
                f"{r['speedup']:.1f}x",
                f"{r['agreement']:.3f}",
                f"{r['min_agreement']:.3f}",
                f"{r['top_positions_overlap']:.3f}",
                f"{r['recall']:.3f}",
                f"{r['full_recall']:.3f}",
            ]
            for r in rows
        ],
    )
    write_result(
        "cluster_search",
        payload,
        f"{retriever.index.n_positions:,} indexed tokens of {args.haystacks} HotpotQA haystacks, "
        f"{len(examples)} questions each over all of them; clusters built in "
        f"{cluster_build_s:.1f} s.\n\n{table}",
    )


if __name__ == "__main__":
    main()
