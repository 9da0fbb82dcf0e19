"""Query latency on CPU at 100k, 1M and 10M indexed tokens, against bm25s and dense MiniLM.

Each query is split into the model's forward pass over the question and the index search
(position scores over every indexed token). The exact scorer is timed twice: with its default
clustered search (past 65,536 positions each question row reads the keys of its best clusters,
s3_retriever/search/clustered.py) and reading every key, the reference it replaces. The index is
saved and loaded memory-mapped at each size. Peers at the same corpus sizes, timed in the same
run on the same questions:

- bm25s (``BM25Baseline``) over the same texts, split into the same sentence units;
- dense all-MiniLM-L6-v2 flat search (``DenseBaseline.embed`` for the question, a dot product
  with every unit embedding, top 10).

~100k tokens of real text (HotpotQA haystacks) are scanned once; 1M and 10M are that index
repeated (benchmarks/replicate.py), since scanning 10M tokens here would take hours. MiniLM
embeds the base units once and its vectors are repeated the same way.

    python -m benchmarks.query_latency --tokens 100000 --sizes 100000,1000000,10000000
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import math
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, haystacks, quiet, quiet_retriever
from benchmarks.replicate import check_replication, replicate
from s3_retriever import S3Retriever, ScoringConfig
from s3_retriever.eval.baselines import BM25Baseline, DenseBaseline, split_units

# Decoded postings cost 8 bytes each (int32 position, float32 activation); past this many the
# aligned scorer's cache would exceed the benchmark's memory budget.
MAX_DECODED_POSTINGS = 200_000_000


def _median_ms(samples: list[float]) -> float:
    return 1000.0 * float(np.median(samples))


def _timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    out = fn()
    return time.perf_counter() - started, out


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _p99_ms(samples: list[float]) -> float:
    return 1000.0 * float(np.percentile(samples, 99))


def _s3_times(
    retriever: S3Retriever, questions: list[str], scoring: ScoringConfig, modes: tuple[str, ...]
) -> dict[str, float]:
    """Median forward and search times, and p50/p99 end-to-end ``retrieve`` (1,024-token
    budget) in each of ``modes``, in ms.

    The first query of each mode is timed apart: it also builds what the search derives once
    per loaded index (key clusters when the saved index has none, decoded postings, BM25).
    """
    settings = retriever.config.search_settings()
    settings = dataclasses.replace(settings, scoring=scoring)
    forward, search = [], []
    out: dict[str, float] = {}
    for mode in modes:
        first, _ = _timed(
            lambda m=mode: retriever.retrieve(
                questions[0], token_budget=1024, mode=m, search=settings
            )
        )
        out[f"first_query_{mode}_ms"] = 1000.0 * first
    totals: dict[str, list[float]] = {mode: [] for mode in modes}
    for question in questions:
        t_fwd, vectors = _timed(lambda q=question: retriever.question_vectors(q, settings))
        t_search, _ = _timed(lambda v=vectors: retriever.score_question_vectors(v, search=settings))
        forward.append(t_fwd)
        search.append(t_search)
        for mode in modes:
            # End to end includes the question's forward pass: forget the projections the
            # retriever keeps for repeated questions (s3_retriever/search/question.py).
            retriever._questions._cache.clear()
            t_all, _ = _timed(
                lambda q=question, m=mode: retriever.retrieve(
                    q, token_budget=1024, mode=m, search=settings
                )
            )
            totals[mode].append(t_all)
    out["forward_ms"] = _median_ms(forward)
    out["search_ms"] = _median_ms(search)
    out["first_query_ms"] = out[f"first_query_{modes[0]}_ms"]
    for mode in modes:
        out[f"end_to_end_{mode}_ms"] = _median_ms(totals[mode])
        out[f"end_to_end_{mode}_p99_ms"] = _p99_ms(totals[mode])
    out["end_to_end_ms"] = out[f"end_to_end_{modes[0]}_ms"]
    return out


def _plain_path_times(
    retriever: S3Retriever, questions: list[str], modes: tuple[str, ...]
) -> dict[str, float]:
    """End-to-end times with the dense plain path after the search (every position smoothed
    and scanned for peaks), the reference the sparse fast path replaces."""
    from s3_retriever.search import pipeline

    fast = pipeline.score_index_sparse
    pipeline.score_index_sparse = lambda *args, **kwargs: None  # type: ignore[assignment]
    try:
        return _s3_times(retriever, questions, ScoringConfig(), modes)
    finally:
        pipeline.score_index_sparse = fast


def _bm25_times(texts: list[str], questions: list[str]) -> dict[str, float]:
    bm25 = BM25Baseline()
    t_index, _ = _timed(lambda: bm25.add_documents(texts))
    samples = [_timed(lambda q=q: bm25.scores(q))[0] for q in questions]
    return {"index_s": t_index, "query_ms": _median_ms(samples), "units": len(bm25.store.units)}


def _dense_times(
    dense: DenseBaseline, unit_vectors: np.ndarray, copies: int, questions: list[str]
) -> dict[str, float]:
    vectors = np.tile(unit_vectors, (copies, 1))
    embed, search = [], []
    for question in questions:
        t_embed, query = _timed(lambda q=question: dense.embed([q])[0])

        def flat_search(v: np.ndarray = query) -> np.ndarray:
            scores = vectors @ v
            return np.argpartition(-scores, 10)[:10]

        embed.append(t_embed)
        search.append(_timed(flat_search)[0])
    return {
        "embed_ms": _median_ms(embed),
        "search_ms": _median_ms(search),
        "units": len(vectors),
        "vectors_mib": vectors.nbytes / 2**20,
    }


def _write(
    args: argparse.Namespace, base: dict[str, Any], heads: Any, rows: list[dict[str, Any]]
) -> None:
    modes = tuple(args.modes.split(","))
    """Write the result files; called after every size, so a long run leaves what it measured."""
    payload = {
        "settings": {**vars(args), "token_budget": 1024},
        "base": base,
        "heads": heads,
        "rows": rows,
    }
    table_rows = []
    for r in rows:
        exact, bm25, dense_t = r["exact"], r["bm25s"], r["dense"]
        plain, full = r.get("plain_path"), r.get("exact_full")
        minilm = dense_t["embed_ms"] + dense_t["search_ms"]
        mode_cells = []
        for mode in modes:
            p50, p99 = exact[f"end_to_end_{mode}_ms"], exact[f"end_to_end_{mode}_p99_ms"]
            mode_cells += [
                f"{p50:.0f} / {p99:.0f}",
                f"{p50 / minilm:.2f}",
                f"{plain[f'end_to_end_{mode}_ms'] / p50:.1f}" if plain else "not run",
            ]
        table_rows.append(
            [
                f"{r['tokens']:,}",
                f"{exact['forward_ms']:.0f}",
                f"{exact['search_ms']:.0f}",
                *mode_cells,
                f"{minilm:.1f}",
                f"{bm25['query_ms']:.1f}",
                f"{full['search_ms'] / exact['search_ms']:.1f}" if full else "not run",
                f"{exact['first_query_ms'] / 1000:.1f}",
                f"{r['rss_mib_after_queries']:.0f}",
            ]
        )
    mode_headers = []
    for mode in modes:
        mode_headers += [
            f"{mode} retrieve p50 / p99 ms",
            f"{mode} p50 / MiniLM query",
            f"{mode} plain path / fast path (p50)",
        ]
    table = markdown_table(
        [
            "indexed tokens",
            "question forward ms",
            "S3 search ms",
            *mode_headers,
            "MiniLM query ms (embed + flat search)",
            "bm25s query ms",
            "every key read / clustered (search)",
            "first query s (after load)",
            "RSS MiB",
        ],
        table_rows,
    )
    write_result(args.name, payload, table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--tokens", type=int, default=100_000, help="real tokens to scan")
    parser.add_argument("--sizes", default="100000,1000000,10000000", help="indexed tokens")
    parser.add_argument("--questions", type=int, default=20, help="questions timed per size")
    parser.add_argument("--threads", type=int, default=None, help="torch threads (default: all)")
    parser.add_argument("--index", default=None, help="reuse (or write) the scanned base index")
    parser.add_argument(
        "--modes", default="s3,hybrid", help="retrieve modes timed end to end (first one leads)"
    )
    parser.add_argument(
        "--skip-reference",
        action="store_true",
        help="skip reading every key and the aligned scorer (the search references)",
    )
    parser.add_argument(
        "--plain-path-max",
        type=int,
        default=10_000_000,
        help="also time the dense plain path after the search up to this many tokens",
    )
    parser.add_argument("--name", default="query_latency", help="result file name")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(s) for s in args.sizes.split(",")]
    modes = tuple(args.modes.split(","))

    examples = haystacks(data_dir(args.data), n=max(1, args.tokens // 4000))
    if args.index and Path(args.index).exists():
        retriever = quiet(S3Retriever.load(args.index))
        t_scan = math.nan  # scanned by an earlier run
    else:
        retriever = quiet_retriever()
        t_scan = 0.0
        for example in examples:
            if retriever.index.corpus.n_positions >= args.tokens:
                break
            t, _ = _timed(lambda e=example: retriever.add_documents(e.documents, ids=e.doc_ids))
            t_scan += t
        if args.index:
            retriever.save(args.index)
    base_tokens = retriever.index.corpus.n_positions
    base_texts = list(retriever.index.corpus.texts)
    questions = [e.question for e in examples][: args.questions]
    for postings in retriever.index.postings.values():
        check_replication(postings, base_tokens)

    dense = DenseBaseline()
    units = [text[s:e] for text in base_texts for s, e in split_units(text)]
    t_embed, unit_vectors = _timed(lambda: dense.embed(units))

    base = {
        "tokens": base_tokens,
        "documents": len(base_texts),
        "scan_s": t_scan,
        "scan_tokens_per_s": base_tokens / t_scan,
        "minilm_units": len(units),
        "minilm_embed_s": t_embed,
    }
    rows: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s3-latency-") as tmp:
        retriever.save(Path(tmp) / "base")
        for size in sizes:
            copies = max(1, round(size / base_tokens))
            grown = S3Retriever.load(Path(tmp) / "base")
            replicate(grown, copies)
            path = Path(tmp) / f"x{copies}"
            t_save, _ = _timed(lambda g=grown, p=path: g.save(p))
            n_postings = sum(int(p.indptr[-1]) for p in grown.index.postings.values())
            del grown
            gc.collect()
            t_load, loaded = _timed(lambda p=path: S3Retriever.load(p))
            loaded.scanner.config = retriever.scanner.config
            row: dict[str, Any] = {
                "target_tokens": size,
                "tokens": loaded.index.corpus.n_positions,
                "copies": copies,
                "postings": n_postings,
                "save_s": t_save,
                "load_s": t_load,
                "index_mib_on_disk": sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
                / 2**20,
                # The default: clustered search past 65,536 positions.
                "exact": _s3_times(loaded, questions, ScoringConfig(), modes),
            }
            if loaded.index.corpus.n_positions <= args.plain_path_max:
                row["plain_path"] = _plain_path_times(loaded, questions, modes)
            if not args.skip_reference:
                row["exact_full"] = _s3_times(
                    loaded, questions, ScoringConfig(cluster_search_above=None), modes[:1]
                )
                if n_postings <= MAX_DECODED_POSTINGS:
                    row["aligned"] = _s3_times(
                        loaded, questions, ScoringConfig(scorer="aligned"), modes[:1]
                    )
            row["rss_mib_after_queries"] = _rss_mib()
            del loaded
            gc.collect()
            row["bm25s"] = _bm25_times(base_texts * copies, questions)
            row["dense"] = _dense_times(dense, unit_vectors, copies, questions)
            rows.append(row)
            _write(args, base, [list(h) for h in retriever.heads], rows)
            for stale in path.rglob("*"):
                if stale.is_file():
                    stale.unlink()


if __name__ == "__main__":
    main()
