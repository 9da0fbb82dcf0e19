"""Load test: many threads calling ``retrieve`` on one shared retriever, for a bounded time.

The bundled SmolLM2-135M-Instruct indexes the GPL-3 text (examples/data/gpl-3.0.txt); then
``--threads`` threads query it for ``--seconds``, and so does a single thread (the peer, measured
in the same run). Reports queries per second and p50/p99 latency of each, and their ratio::

    python -m benchmarks.load_test --threads 8 --seconds 20

Everything is in-process: no server and no network.
"""

from __future__ import annotations

import argparse
import os
import threading
import time
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, write_result

TEXT = Path(__file__).resolve().parent.parent / "examples" / "data" / "gpl-3.0.txt"
QUESTIONS = (
    "Can I charge a fee for copies of the program?",
    "What must I provide along with object code?",
    "What happens if I violate the license?",
    "Does the license cover patents?",
    "What is a User Product?",
    "Can I add further restrictions?",
    "Is there any warranty for the program?",
    "How do I apply these terms to a new program?",
    "What counts as the Corresponding Source?",
    "When is my license terminated and how is it reinstated?",
    "Can a later version of the license be used?",
    "What does propagate mean?",
)


def _run(retriever: Any, threads: int, seconds: float, budget: int, mode: str) -> dict[str, Any]:
    """``threads`` threads query round-robin until ``seconds`` pass; latencies of all queries."""
    latencies: list[list[float]] = [[] for _ in range(threads)]
    errors: list[BaseException] = []
    barrier = threading.Barrier(threads + 1)
    deadline = 0.0

    def worker(slot: int) -> None:
        barrier.wait()
        i = slot
        try:
            while time.perf_counter() < deadline:
                start = time.perf_counter()
                retriever.retrieve(QUESTIONS[i % len(QUESTIONS)], token_budget=budget, mode=mode)
                latencies[slot].append(time.perf_counter() - start)
                i += 1
        except BaseException as exc:  # noqa: BLE001 - counted and reported
            errors.append(exc)

    pool = [threading.Thread(target=worker, args=(slot,)) for slot in range(threads)]
    for thread in pool:
        thread.start()
    deadline = time.perf_counter() + seconds
    began = time.perf_counter()
    barrier.wait()
    for thread in pool:
        thread.join()
    wall = time.perf_counter() - began
    flat = np.array([x for per in latencies for x in per]) * 1000.0
    return {
        "threads": threads,
        "queries": int(flat.size),
        "errors": len(errors),
        "wall_s": round(wall, 2),
        "qps": round(flat.size / wall, 2),
        "p50_ms": round(float(np.percentile(flat, 50)), 1) if flat.size else None,
        "p99_ms": round(float(np.percentile(flat, 99)), 1) if flat.size else None,
    }


def _run_with_writer(retriever: Any, args: argparse.Namespace) -> dict[str, Any]:
    """The concurrent run while another thread adds (and then deletes) a short document every
    half second: queries wait only for each commit."""
    stop = threading.Event()
    paragraphs = [p for p in TEXT.read_text(encoding="utf-8").split("\n\n") if p.strip()]
    commits: list[float] = []

    def writer() -> None:
        i = 0
        while not stop.wait(0.5):
            start = time.perf_counter()
            retriever.add_documents([paragraphs[i % len(paragraphs)]], ids=[f"extra-{i}"])
            commits.append(time.perf_counter() - start)
            retriever.delete([f"extra-{i}"])
            i += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        result = _run(retriever, args.threads, args.seconds, args.budget, args.mode)
    finally:
        stop.set()
        thread.join()
    result["run"] = f"with a writer ({len(commits)} adds + deletes)"
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=8, help="concurrent query threads")
    parser.add_argument("--seconds", type=float, default=20.0, help="duration of each run")
    parser.add_argument("--budget", type=int, default=512, help="token budget per query")
    parser.add_argument("--mode", default="hybrid", choices=("hybrid", "s3", "bm25"))
    parser.add_argument(
        "--torch-threads", type=int, default=1, help="torch threads per query (1: one core each)"
    )
    parser.add_argument("--name", default="load", help="result file name")
    args = parser.parse_args()

    import torch

    from s3_retriever import S3Retriever

    torch.set_num_threads(args.torch_threads)
    retriever = S3Retriever.from_pretrained()
    start = time.perf_counter()
    retriever.add_documents([TEXT.read_text(encoding="utf-8")], ids=["gpl-3"])
    index_s = time.perf_counter() - start
    for question in QUESTIONS:  # warm-up: BM25 build, lazy allocations
        retriever.retrieve(question, token_budget=args.budget, mode=args.mode)
    sequential = _run(retriever, 1, args.seconds, args.budget, args.mode)
    concurrent = _run(retriever, args.threads, args.seconds, args.budget, args.mode)
    # The peer for the lock: the same threads with every query holding one exclusive lock, as
    # before queries shared a readers-writer lock (s3_retriever/rwlock.py).
    shared_read = retriever._lock.read
    retriever._lock.read = retriever._lock.write
    try:
        serialised = _run(retriever, args.threads, args.seconds, args.budget, args.mode)
    finally:
        retriever._lock.read = shared_read
    serialised["run"] = "serialised"
    with_writer = _run_with_writer(retriever, args)
    ratio = concurrent["qps"] / sequential["qps"]
    rows = [
        [
            f"{r['threads']} thread(s)" + (f", {r['run']}" if "run" in r else ""),
            r["queries"],
            r["errors"],
            r["qps"],
            round(r["p50_ms"]),  # whole milliseconds: the table's float format would go to e+03
            round(r["p99_ms"]),
        ]
        for r in (sequential, concurrent, serialised, with_writer)
    ]
    table = markdown_table(["run", "queries", "errors", "qps", "p50 ms", "p99 ms"], rows)
    table += (
        f"\n\nqps ratio {args.threads} threads / 1 thread: {ratio:.2f}; with queries "
        f"serialised on one lock: {serialised['qps'] / sequential['qps']:.2f} "
        f"(1-minute load average at the end: {os.getloadavg()[0]:.1f})"
    )
    write_result(
        args.name,
        {
            "settings": {**vars(args), "torch_threads": torch.get_num_threads()},
            "document": {
                "path": "examples/data/gpl-3.0.txt",
                "tokens": retriever.index.corpus.n_positions,
            },
            "index_seconds": round(index_s, 2),
            "sequential": sequential,
            "concurrent": concurrent,
            "serialised": serialised,
            "with_writer": with_writer,
            "qps_ratio": round(ratio, 3),
            # Other work on the machine slows both runs; this says how much there was.
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        table,
    )


if __name__ == "__main__":
    main()
