"""Sharded indexing and search on Ray against the single-process path, in one run.

Short real documents (QMSum turns, then HotpotQA paragraphs) up to ``--tokens`` model tokens
are indexed by the single-process path (``index_corpus``, what ``s3-retriever index`` runs) and
by :func:`s3_retriever.distributed.build_index` with 1, 2 and 4 shards on a local Ray cluster
(``--cpus`` CPUs, ``--actors`` scan actors); then HotpotQA questions are asked of each index in
every mode. It records indexing throughput, median query latency, the bytes each shard holds,
and how many answers of each sharded index equal the single index's (spans and scores within
1e-5). Scan batching differs between the two paths (the build batches a few documents per scan
call), which can change keys in their last bits and move an int8 key code by one step;
``--one-chunk-per-pass`` makes both read one chunk per forward pass, so both store the same keys.

    python -m benchmarks.sharded --tokens 1000000 --questions 20
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, haystacks, quiet, quiet_retriever, short_documents
from s3_retriever import S3Retriever
from s3_retriever.bulk import SourceDocument, index_corpus

MODES = ("s3", "hybrid", "bm25")


def _documents(folder: Path, tokens: int, retriever: Any) -> list[SourceDocument]:
    """Documents in source order until their model tokens reach ``tokens``."""
    docs, total = [], 0
    tokenizer = retriever.loaded.tokenizer
    for doc in short_documents(folder, 10_000_000):
        docs.append(doc)
        total += len(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        if total >= tokens:
            break
    return docs


def _latency(retriever: Any, questions: list[str], budget: int) -> dict[str, Any]:
    """Median latency per mode (each question once to warm up, then timed) and the answers."""
    out: dict[str, Any] = {}
    for mode in MODES:
        answers, times, rounds = [], [], []
        for question in questions:
            retriever.retrieve(question, token_budget=budget, mode=mode)
            before = getattr(retriever, "round_trips", 0)
            start = time.perf_counter()
            answers.append(retriever.retrieve(question, token_budget=budget, mode=mode))
            times.append(time.perf_counter() - start)
            rounds.append(getattr(retriever, "round_trips", 0) - before)
        out[mode] = {
            "median_ms": 1000 * statistics.median(times),
            "answers": answers,
            "round_trips": statistics.mean(rounds),
        }
    return out


def _same(a: list[Any], b: list[Any]) -> bool:
    return [(h.doc_id, h.start_char, h.end_char) for h in a] == [
        (h.doc_id, h.start_char, h.end_char) for h in b
    ] and all(abs(x.score - y.score) <= 1e-5 for x, y in zip(a, b, strict=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="corpus size in tokens")
    parser.add_argument("--questions", type=int, default=20, help="HotpotQA questions asked")
    parser.add_argument("--budget", type=int, default=1024, help="token budget per question")
    parser.add_argument("--shards", default="1,2,4", help="shard counts to build")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--actors", type=int, default=1, help="scan actors of the build")
    parser.add_argument("--commit-every", type=int, default=500, help="documents per commit")
    parser.add_argument(
        "--one-chunk-per-pass",
        action="store_true",
        help="scan one chunk per forward pass in both paths (ScanConfig(batch_size=1)), so both "
        "store the same keys and the answers can be compared for equality",
    )
    parser.add_argument("--name", default="sharded", help="result file stem after bench_")
    args = parser.parse_args()
    import ray

    from s3_retriever.distributed import ShardedRetriever, build_index

    folder = data_dir(args.data)
    single = quiet_retriever()
    config = None
    if args.one_chunk_per_pass:
        config = single.config.replace(scan=dataclasses.replace(single.config.scan, batch_size=1))
        single = quiet(S3Retriever(single.loaded, single.bundle, config))
    docs = _documents(folder, args.tokens, single)
    questions = [ex.question for ex in haystacks(folder, args.questions)]
    runs: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="s3-sharded-") as tmp:
        start = time.perf_counter()
        report = index_corpus(
            single, iter(docs), Path(tmp) / "single", args.commit_every, progress=False
        )
        seconds = time.perf_counter() - start
        tokens = single.index.n_positions
        reference = _latency(single, questions, args.budget)
        runs.append(
            {"path": "single process", "shards": 1, "index_s": seconds, "tokens": report.tokens}
            | {f"{m}_ms": reference[m]["median_ms"] for m in MODES}
        )
        ray.init(num_cpus=args.cpus, log_to_driver=False)
        for n in [int(x) for x in args.shards.split(",")]:
            out = Path(tmp) / f"shards-{n}"
            start = time.perf_counter()
            built = build_index(
                docs,
                out,
                n,
                config=config,
                num_actors=args.actors,
                commit_every=args.commit_every,
                progress=False,
            )
            seconds = time.perf_counter() - start
            sharded = ShardedRetriever.load(out, num_cpus_per_shard=args.cpus / (2 * n))
            measured = _latency(sharded, questions, args.budget)
            info = sharded.shard_info()
            runs.append(
                {
                    "path": f"Ray, {n} shard(s)",
                    "shards": n,
                    "index_s": seconds,
                    "tokens": built.tokens,
                    "shard_documents": built.shards,
                    "max_shard_mib": max(sum(i["nbytes"].values()) for i in info) / 2**20,
                }
                | {f"{m}_ms": measured[m]["median_ms"] for m in MODES}
                | {f"{m}_round_trips": measured[m]["round_trips"] for m in MODES}
                | {
                    f"{m}_same": sum(
                        _same(a, b)
                        for a, b in zip(
                            measured[m]["answers"], reference[m]["answers"], strict=True
                        )
                    )
                    for m in MODES
                }
            )
            sharded.close()
        ray.shutdown()
    for run in runs:
        run["tokens_per_s"] = run["tokens"] / run["index_s"]
    rows = [
        [
            r["path"],
            f"{r['tokens_per_s']:.0f}",
            *[f"{r[f'{m}_ms']:.0f}" for m in MODES],
            f"{r.get('max_shard_mib', sum(single.index.nbytes().values()) / 2**20):.1f}",
            " / ".join(str(r.get(f"{m}_same", "-")) for m in MODES),
            " / ".join(
                f"{r[f'{m}_round_trips']:.1f}" if f"{m}_round_trips" in r else "-" for m in MODES
            ),
        ]
        for r in runs
    ]
    table = markdown_table(
        [
            "index",
            "indexing tok/s",
            "S3 ms",
            "hybrid ms",
            "BM25 ms",
            "largest shard MiB",
            f"same answers as single (s3 / hybrid / bm25, of {len(questions)})",
            "round trips per question (s3 / hybrid / bm25)",
        ],
        rows,
    )
    table += (
        f"\n\n{tokens:,} tokens in {len(docs):,} documents; median latency over "
        f"{len(questions)} HotpotQA questions at a {args.budget}-token budget; a Ray cluster of "
        f"{args.cpus} CPUs and {args.actors} scan actor(s)."
    )
    write_result(args.name, {"settings": vars(args), "documents": len(docs), "runs": runs}, table)


if __name__ == "__main__":
    main()
