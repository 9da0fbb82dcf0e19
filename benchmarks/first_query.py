"""The first query after an add against the next ones, and end-to-end ``retrieve`` against MiniLM.

QMSum meeting transcripts (one document per meeting) are indexed until ``--tokens`` tokens; then,
``--adds`` times, one more meeting is added and hybrid ``retrieve`` (1,024-token budget) is timed
for the first question after the add and for ``--next`` further questions (each question asked
once, so every query pays its forward pass). The same is done with the BM25 index rebuilt from
scratch after each add (the behaviour before BM25 became incremental, forced with
``index.bm25.invalidate()``), in the same run. Peers timed in the same run on the same
questions: dense all-MiniLM-L6-v2 (question embedding + flat search over the units' vectors) and
bm25s over the same units::

    python -m benchmarks.first_query --tokens 25000 --adds 5
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import numpy as np
import torch

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, quiet_retriever
from s3_retriever import S3Retriever
from s3_retriever.eval.baselines import BM25Baseline, DenseBaseline, split_units


def _meetings(folder: Any) -> tuple[list[str], list[str]]:
    """Meeting texts and their questions, in file order."""
    texts, questions = [], []
    with open(folder / "qmsum_val" / "val.jsonl") as handle:
        for line in handle:
            meeting = json.loads(line)
            turns = meeting["meeting_transcripts"]
            texts.append("\n".join(f"{t['speaker']}: {t['content']}" for t in turns))
            questions += [q["query"] for q in meeting["specific_query_list"]]
    return texts, questions


def _ms(seconds: float) -> float:
    return 1000.0 * seconds


def _timed_query(retriever: S3Retriever, question: str) -> float:
    start = time.perf_counter()
    retriever.retrieve(question, token_budget=1024, mode="hybrid")
    return time.perf_counter() - start


def _after_adds(
    retriever: S3Retriever,
    new_texts: list[str],
    questions: list[str],
    n_next: int,
    rebuild: bool,
) -> list[dict[str, float]]:
    """For each text: add it, then time the first query and the next ``n_next``."""
    rows = []
    asked = iter(questions)
    for i, text in enumerate(new_texts):
        retriever.add_documents([text], ids=[f"{'rebuild' if rebuild else 'inc'}-{i}"])
        if rebuild:
            retriever.index.bm25.invalidate()
        first = _timed_query(retriever, next(asked))
        following = [_timed_query(retriever, next(asked)) for _ in range(n_next)]
        rows.append({"first_ms": _ms(first), "next_median_ms": _ms(float(np.median(following)))})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--tokens", type=int, default=25_000, help="tokens indexed before adds")
    parser.add_argument("--adds", type=int, default=5, help="adds timed per variant")
    parser.add_argument("--next", type=int, default=5, help="queries timed after the first")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    parser.add_argument("--name", default="first_query", help="result file name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    texts, questions = _meetings(data_dir(args.data))

    retriever = quiet_retriever()
    used = 0
    start = time.perf_counter()
    while retriever.index.n_positions < args.tokens:
        retriever.add_documents([texts[used]], ids=[f"base-{used}"])
        used += 1
    index_s = time.perf_counter() - start
    base_tokens = retriever.index.n_positions
    for question in questions[:3]:  # warm-up: first allocations
        _timed_query(retriever, question)
    per_variant = 1 + args.next
    need = 2 * args.adds * per_variant
    pool = questions[3 : 3 + need]
    new_texts = [t[:4000] for t in texts[used : used + args.adds]]
    incremental = _after_adds(
        retriever, new_texts, pool[: args.adds * per_variant], args.next, rebuild=False
    )
    rebuilt = _after_adds(
        retriever, new_texts, pool[args.adds * per_variant :], args.next, rebuild=True
    )
    steady = [_timed_query(retriever, q) for q in questions[3 + need : 3 + need + 20]]

    corpus_texts = list(retriever.index.corpus.texts)
    units = [text[s:e] for text in corpus_texts for s, e in split_units(text)]
    dense = DenseBaseline()
    vectors = dense.embed(units)
    dense_ms = []
    for question in questions[3 + need : 3 + need + 20]:
        start = time.perf_counter()
        query = dense.embed([question])[0]
        np.argpartition(-(vectors @ query), 10)[:10]
        dense_ms.append(time.perf_counter() - start)
    bm25 = BM25Baseline()
    bm25.add_documents(corpus_texts)
    bm25_ms = []
    for question in questions[3 + need : 3 + need + 20]:
        start = time.perf_counter()
        bm25.scores(question)
        bm25_ms.append(time.perf_counter() - start)

    def ratio(rows: list[dict[str, float]]) -> float:
        return float(np.median([r["first_ms"] / r["next_median_ms"] for r in rows]))

    summary = {
        "incremental_first_over_next": ratio(incremental),
        "rebuild_first_over_next": ratio(rebuilt),
        "hybrid_p50_ms": _ms(float(np.median(steady))),
        "hybrid_p99_ms": _ms(float(np.percentile(steady, 99))),
        "minilm_p50_ms": _ms(float(np.median(dense_ms))),
        "bm25s_p50_ms": _ms(float(np.median(bm25_ms))),
    }
    table = markdown_table(
        ["measure", "value"],
        [
            ["tokens indexed before the adds", f"{base_tokens:,}"],
            [
                "BM25 kept incrementally: first query / next (median of adds)",
                f"{summary['incremental_first_over_next']:.2f}",
            ],
            [
                "BM25 rebuilt after each add: first query / next",
                f"{summary['rebuild_first_over_next']:.2f}",
            ],
            [
                "hybrid retrieve p50 / p99 ms",
                f"{summary['hybrid_p50_ms']:.0f} / {summary['hybrid_p99_ms']:.0f}",
            ],
            [
                "hybrid p50 / MiniLM query p50",
                f"{summary['hybrid_p50_ms'] / summary['minilm_p50_ms']:.2f}",
            ],
            [
                "hybrid p50 / bm25s query p50",
                f"{summary['hybrid_p50_ms'] / summary['bm25s_p50_ms']:.1f}",
            ],
        ],
    )
    write_result(
        args.name,
        {
            "settings": vars(args),
            "base_tokens": base_tokens,
            "base_documents": used,
            "index_s": index_s,
            "incremental": incremental,
            "rebuilt": rebuilt,
            "summary": summary,
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        table,
    )


if __name__ == "__main__":
    main()
