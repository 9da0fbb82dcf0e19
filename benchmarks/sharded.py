"""Sharded indexing and search on Ray against the single-process path, in one run.

Short real documents (QMSum turns, then HotpotQA paragraphs) up to ``--tokens`` model tokens
make the corpus. Two measurements, each against the single-process path in the same run:

- **Query latency** over the whole corpus. One index is built once by the single-process path
  (``index_corpus``, what ``s3-retriever index`` runs) and saved in ``--single-index``, where a
  later run finds it (a partial one is resumed). It is resharded into 1, 2 and 4 shards
  (:func:`s3_retriever.distributed.reshard`: the same keys, so answers can be compared), each
  searched by :class:`~s3_retriever.distributed.ShardedRetriever` on a local Ray cluster. Every
  HotpotQA question is asked once per mode after one warm-up call; p50 and p99 are reported for
  the single index as it searches by default (clustered search above 65,536 positions), for the
  single index reading every key (what shards do, and whose answers they must equal) and for
  each shard count, with the number of answers equal to the single full read.
- **Indexing throughput** on the first ``--index-tokens`` tokens: ``add_documents`` on one
  ``S3Retriever`` (in batches of ``--commit-every``, then one save) against
  :func:`~s3_retriever.distributed.build_index` with 1, 2 and 4 shards (``--actors`` scan
  actors; shard saves included).

    python -m benchmarks.sharded --data /work/shared/data --tokens 1000000 \\
        --index-tokens 100000 --questions 30 --single-index /tmp/s3-sharded-1m

``--build-only`` stops after the single index is built (it takes longest, so it can run first).
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, haystacks, quiet, quiet_retriever, short_documents
from s3_retriever import S3Retriever
from s3_retriever.bulk import SourceDocument, index_corpus
from s3_retriever.index.storage import has_index

MODES = ("s3", "hybrid", "bm25")


def _documents(folder: Path, tokens: int, retriever: Any) -> list[tuple[SourceDocument, int]]:
    """Documents in source order, with their model tokens, until they reach ``tokens``."""
    docs, total = [], 0
    tokenizer = retriever.model.tokenizer
    for doc in short_documents(folder, 10_000_000):
        n = len(tokenizer(doc.text, add_special_tokens=False)["input_ids"])
        docs.append((doc, n))
        total += n
        if total >= tokens:
            break
    return docs


def _single_index(
    path: Path, docs: list[SourceDocument], commit_every: int, empty: S3Retriever
) -> S3Retriever:
    """The single-process index of ``docs`` saved at ``path``: loaded, completed if partial
    (``empty``, a retriever with no documents, indexes them when nothing is saved there)."""
    retriever = quiet(S3Retriever.load(path, loaded=empty.model)) if has_index(path) else empty
    done = set(retriever.doc_ids)
    if any(d.doc_id not in done for d in docs):
        index_corpus(retriever, iter(docs), path, commit_every, progress=False)
    return retriever


def _latency(retriever: Any, questions: list[str], budget: int, **kw: Any) -> dict[str, Any]:
    """Per mode: p50 and p99 latency over the questions (after one warm-up call) and answers."""
    out: dict[str, Any] = {}
    for mode in MODES:
        retriever.retrieve(questions[0], token_budget=budget, mode=mode, **kw)
        answers, times, rounds = [], [], []
        for question in questions:
            before = getattr(retriever, "round_trips", 0)
            start = time.perf_counter()
            answers.append(retriever.retrieve(question, token_budget=budget, mode=mode, **kw))
            times.append(time.perf_counter() - start)
            rounds.append(getattr(retriever, "round_trips", 0) - before)
        out[mode] = {
            "p50_ms": 1000 * float(np.percentile(times, 50)),
            "p99_ms": 1000 * float(np.percentile(times, 99)),
            "answers": answers,
            "round_trips": float(np.mean(rounds)),
        }
    return out


def _same(a: list[Any], b: list[Any]) -> bool:
    return [(h.doc_id, h.start_char, h.end_char) for h in a] == [
        (h.doc_id, h.start_char, h.end_char) for h in b
    ] and all(abs(x.score - y.score) <= 1e-5 for x, y in zip(a, b, strict=True))


def _query_runs(args: argparse.Namespace, single: S3Retriever, questions: list[str]) -> list[Any]:
    from s3_retriever.distributed import ShardedRetriever, reshard

    settings = single.config.search_settings()
    full_read = dataclasses.replace(
        settings, scoring=dataclasses.replace(settings.scoring, cluster_search_above=None)
    )
    clustered = _latency(single, questions, args.budget)
    reference = _latency(single, questions, args.budget, search=full_read)
    runs = [
        {"path": "single process (default: clustered search)", **_summary(clustered)},
        {"path": "single process, every key read", **_summary(reference)},
    ]
    with tempfile.TemporaryDirectory(prefix="s3-sharded-") as tmp:
        for n in _shard_counts(args):
            out = Path(tmp) / f"shards-{n}"
            start = time.perf_counter()
            reshard(args.single_index, out, n)
            reshard_s = time.perf_counter() - start
            sharded = ShardedRetriever.load(out, num_cpus_per_shard=args.cpus / (2 * n))
            measured = _latency(sharded, questions, args.budget)
            info = sharded.shard_info()
            sharded.close()
            same = {
                f"{m}_same": sum(
                    _same(a, b)
                    for a, b in zip(measured[m]["answers"], reference[m]["answers"], strict=True)
                )
                for m in MODES
            }
            runs.append(
                {"path": f"Ray, {n} shard(s)", "shards": n, "reshard_s": reshard_s}
                | {"max_shard_mib": max(sum(i["nbytes"].values()) for i in info) / 2**20}
                | _summary(measured)
                | {f"{m}_round_trips": measured[m]["round_trips"] for m in MODES}
                | same
            )
    return runs


def _summary(measured: dict[str, Any]) -> dict[str, float]:
    return {f"{m}_{q}_ms": measured[m][f"{q}_ms"] for m in MODES for q in ("p50", "p99")}


def _index_runs(args: argparse.Namespace, docs: list[SourceDocument]) -> list[dict[str, Any]]:
    from s3_retriever.distributed import build_index

    runs = []
    with tempfile.TemporaryDirectory(prefix="s3-sharded-build-") as tmp:
        single = quiet_retriever()
        start = time.perf_counter()
        for i in range(0, len(docs), args.commit_every):
            batch = docs[i : i + args.commit_every]
            single.add_documents(
                [d.text for d in batch], [d.doc_id for d in batch], [d.metadata for d in batch]
            )
        single.save(Path(tmp) / "single")
        seconds = time.perf_counter() - start
        runs.append(
            {"path": "single process", "seconds": seconds, "tokens": single.index.n_positions}
        )
        for n in _shard_counts(args):
            start = time.perf_counter()
            built = build_index(
                docs,
                Path(tmp) / f"shards-{n}",
                n,
                num_actors=args.actors,
                commit_every=args.commit_every,
                progress=False,
            )
            runs.append(
                {
                    "path": f"Ray, {n} shard(s)",
                    "seconds": time.perf_counter() - start,
                    "tokens": built.tokens,
                }
            )
    for run in runs:
        run["tokens_per_s"] = run["tokens"] / run["seconds"]
        run["ratio"] = run["tokens_per_s"] / runs[0]["tokens_per_s"]
    return runs


def _shard_counts(args: argparse.Namespace) -> list[int]:
    return [int(x) for x in args.shards.split(",")]


def _tables(query: list[dict[str, Any]], index: list[dict[str, Any]], note: str) -> str:
    base = query[1]
    rows = []
    for r in query:
        cells = [r["path"]]
        for m in MODES:
            for q in ("p50", "p99"):
                value = r[f"{m}_{q}_ms"]
                cells.append(f"{value:.0f} ({value / base[f'{m}_{q}_ms']:.2f}x)")
        cells.append(" / ".join(str(r.get(f"{m}_same", "-")) for m in MODES))
        cells.append(
            " / ".join(f"{r[f'{m}_round_trips']:.1f}" if "shards" in r else "-" for m in MODES)
        )
        cells.append(f"{r['max_shard_mib']:.0f}" if "max_shard_mib" in r else "-")
        rows.append(cells)
    header = ["index"]
    header += [f"{m} {q} ms" for m in ("S3", "hybrid", "BM25") for q in ("p50", "p99")]
    header += ["same answers as every-key single (s3 / hybrid / bm25)", "round trips", "MiB/shard"]
    latency = markdown_table(header, rows)
    indexing = markdown_table(
        ["indexing path", "tokens", "seconds", "tokens/s", "vs single process"],
        [
            [r["path"], f"{r['tokens']:,}", f"{r['seconds']:.0f}", f"{r['tokens_per_s']:.0f}"]
            + [f"{r['ratio']:.2f}x"]
            for r in index
        ],
    )
    return f"{latency}\n\n{indexing}\n\n{note}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--tokens", type=int, default=1_000_000, help="corpus size in tokens")
    parser.add_argument(
        "--index-tokens", type=int, default=100_000, help="tokens of the indexing-throughput run"
    )
    parser.add_argument("--questions", type=int, default=30, help="HotpotQA questions asked")
    parser.add_argument("--budget", type=int, default=1024, help="token budget per question")
    parser.add_argument("--shards", default="1,2,4", help="shard counts")
    parser.add_argument("--cpus", type=int, default=2, help="CPUs of the local Ray cluster")
    parser.add_argument("--actors", type=int, default=1, help="scan actors of a build")
    parser.add_argument("--commit-every", type=int, default=500, help="documents per commit")
    parser.add_argument(
        "--single-index", type=Path, required=True, help="folder of the whole-corpus index"
    )
    parser.add_argument("--build-commit-every", type=int, default=5000, help="its commits")
    parser.add_argument("--build-only", action="store_true", help="stop once it is built")
    parser.add_argument("--name", default="sharded", help="result file stem after bench_")
    args = parser.parse_args()
    folder = data_dir(args.data)
    empty = quiet_retriever()
    counted = _documents(folder, args.tokens, empty)
    docs = [d for d, _ in counted]
    start = time.perf_counter()
    single = _single_index(args.single_index, docs, args.build_commit_every, empty)
    if args.build_only:
        print(f"{args.single_index}: {len(single)} documents, {single.index.n_positions} tokens")
        return
    build_s = time.perf_counter() - start
    questions = [ex.question for ex in haystacks(folder, args.questions)]
    import ray

    ray.init(num_cpus=args.cpus, log_to_driver=False)
    try:
        query = _query_runs(args, single, questions)
        cumulative = np.cumsum([n for _, n in counted])
        slice_docs = docs[: int(np.searchsorted(cumulative, args.index_tokens)) + 1]
        index = _index_runs(args, slice_docs)
    finally:
        ray.shutdown()
    note = (
        f"Query latency: {single.index.n_positions:,} tokens in {len(single):,} documents, "
        f"{len(questions)} HotpotQA questions at a {args.budget}-token budget, each asked once "
        f"per mode after one warm-up call (p99 of {len(questions)} samples is about their "
        f"slowest); ratios against the single index reading every key. Indexing: the first "
        f"{index[0]['tokens']:,} tokens ({len(slice_docs):,} documents), {args.actors} scan "
        f"actor(s); a Ray cluster of {args.cpus} CPUs."
    )
    write_result(
        args.name,
        {
            "settings": {k: str(v) for k, v in vars(args).items()},
            "documents": len(single),
            "tokens": single.index.n_positions,
            "single_index_build_s_this_run": build_s,
            "query": query,
            "indexing": index,
        },
        _tables(query, index, note),
    )


if __name__ == "__main__":
    main()
