"""Corpus-scale indexing: 10,000 real documents committed in batches, memory, and resumption.

The run indexes ``--docs`` short real documents (QMSum meeting turns, then HotpotQA paragraphs)
with ``index_corpus`` (what ``s3-retriever index`` runs), saving every ``--commit-every``
documents, and records at every commit the tokens indexed, the elapsed time and the process's
resident memory. On the first ``--sample`` documents it then measures, in the same run:

- the cost of committing: resumable bulk indexing against one plain ``add_documents`` call;
- resumption: a run killed after its third commit, then resumed, against an uninterrupted run
  (identical arrays, and how many documents the resumed run scanned);
- the peer: all-MiniLM-L6-v2 embedding the same documents (what a dense RAG index costs).

    python -m benchmarks.corpus_indexing --docs 10000 --commit-every 500
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, quiet_retriever, short_documents
from s3_retriever import S3Retriever
from s3_retriever.bulk import BulkReport, SourceDocument, index_corpus
from s3_retriever.eval.baselines import DenseBaseline


class _Killed(Exception):
    """Stands in for the signal that stops a run."""


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def _disk_mib(folder: Path) -> float:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file()) / 2**20


def _full_run(docs: list[SourceDocument], out: Path, commit_every: int) -> dict[str, Any]:
    retriever = quiet_retriever()
    started = time.perf_counter()
    commits: list[dict[str, float]] = []

    def record(report: BulkReport) -> None:
        commits.append(
            {
                "documents": report.added,
                "tokens": report.tokens,
                "seconds": time.perf_counter() - started,
                "rss_mib": _rss_mib(),
                "index_mib": _disk_mib(out),
            }
        )

    rss_before = _rss_mib()
    report = index_corpus(
        retriever, iter(docs), out, commit_every=commit_every, total=len(docs), on_commit=record
    )
    seconds = time.perf_counter() - started
    return {
        "documents": report.added,
        "tokens": report.tokens,
        "commits": report.commits,
        "seconds": seconds,
        "tokens_per_s": report.tokens / seconds,
        "rss_mib_before": rss_before,
        "peak_rss_mib": max(c["rss_mib"] for c in commits),
        "index_mib": _disk_mib(out),
        "text_mib": sum(len(d.text.encode()) for d in docs) / 2**20,
        "per_commit": commits,
    }


def _same_index(a: S3Retriever, b: S3Retriever) -> bool:
    if a.doc_ids != b.doc_ids:
        return False
    for field_key, postings in a.index.postings.items():
        other = b.index.postings[field_key]
        if not (
            np.array_equal(postings.position_bytes, other.position_bytes)
            and np.array_equal(postings.activation_codes, other.activation_codes)
        ):
            return False
    return all(
        np.array_equal(store.codes, b.index.key_stores[f].codes)
        for f, store in a.index.key_stores.items()
    )


def _sample_runs(docs: list[SourceDocument], tmp: Path, commit_every: int) -> dict[str, Any]:
    plain = quiet_retriever()
    t0 = time.perf_counter()
    plain.add_documents(
        [d.text for d in docs], ids=[d.doc_id for d in docs], metadatas=[d.metadata for d in docs]
    )
    plain_s = time.perf_counter() - t0
    tokens = plain.index.corpus.n_positions

    bulk = quiet_retriever()
    t0 = time.perf_counter()
    index_corpus(bulk, iter(docs), tmp / "bulk", commit_every=commit_every, progress=False)
    bulk_s = time.perf_counter() - t0

    def kill_after_third(report: BulkReport) -> None:
        if report.commits == 3:
            raise _Killed

    with contextlib.suppress(_Killed):
        index_corpus(
            quiet_retriever(),
            iter(docs),
            tmp / "killed",
            commit_every=commit_every,
            progress=False,
            on_commit=kill_after_third,
        )
    resumed = S3Retriever.load(tmp / "killed")
    kept = len(resumed)
    report = index_corpus(resumed, iter(docs), tmp / "killed", commit_every, progress=False)
    identical = _same_index(S3Retriever.load(tmp / "killed"), S3Retriever.load(tmp / "bulk"))

    dense = DenseBaseline()
    dense.embed([docs[0].text])  # load the model outside the timing
    t0 = time.perf_counter()
    dense.embed([d.text for d in docs])
    dense_s = time.perf_counter() - t0
    return {
        "documents": len(docs),
        "tokens": tokens,
        "plain_add_documents_s": plain_s,
        "bulk_s": bulk_s,
        "bulk_over_plain": bulk_s / plain_s,
        "killed_after_documents": kept,
        "resumed_scanned_documents": report.added,
        "resumed_skipped_documents": report.skipped,
        "resumed_equals_uninterrupted": identical,
        "minilm_embed_s": dense_s,
        "bulk_over_minilm": bulk_s / dense_s,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--docs", type=int, default=10_000, help="documents to index")
    parser.add_argument("--commit-every", type=int, default=500, help="documents per commit")
    parser.add_argument("--sample", type=int, default=600, help="documents for the comparisons")
    parser.add_argument("--sample-commit-every", type=int, default=100)
    args = parser.parse_args()
    docs = list(short_documents(data_dir(args.data), args.docs))
    with tempfile.TemporaryDirectory(prefix="s3-bulk-") as tmp:
        full = _full_run(docs, Path(tmp) / "full", args.commit_every)
        sample = _sample_runs(docs[: args.sample], Path(tmp), args.sample_commit_every)
    payload = {"settings": vars(args), "full": full, "sample": sample}
    commits = full["per_commit"]
    first, last = commits[0], commits[-1]
    table = markdown_table(
        ["measure", "value"],
        [
            ["documents / tokens indexed", f"{full['documents']:,} / {full['tokens']:,}"],
            ["commits (saves)", full["commits"]],
            ["tokens per second (whole run)", f"{full['tokens_per_s']:.0f}"],
            [
                "resident memory at first / last commit (MiB)",
                f"{first['rss_mib']:.0f} / {last['rss_mib']:.0f}",
            ],
            [
                "index on disk at first / last commit (MiB)",
                f"{first['index_mib']:.1f} / {last['index_mib']:.1f}",
            ],
            ["corpus text (MiB)", f"{full['text_mib']:.1f}"],
            [
                f"resumable bulk / one add_documents call ({sample['documents']} docs)",
                f"{sample['bulk_over_plain']:.2f}",
            ],
            [
                f"resumable bulk / MiniLM embedding ({sample['documents']} docs)",
                f"{sample['bulk_over_minilm']:.2f}",
            ],
            [
                "killed after commit 3, resumed: documents scanned again",
                f"{sample['resumed_scanned_documents']} of {sample['documents']} "
                f"({sample['resumed_skipped_documents']} skipped)",
            ],
            ["resumed index identical to uninterrupted", sample["resumed_equals_uninterrupted"]],
        ],
    )
    write_result("corpus_indexing", payload, table)


if __name__ == "__main__":
    main()
