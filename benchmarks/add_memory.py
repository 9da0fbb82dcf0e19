"""Peak memory of ``add_documents`` per token against the bytes per token the index grows by.

One long document is added to a fresh index of the bundled SmolLM2-135M with default settings,
each size in a fresh process, so one size's allocations do not hide the next one's. The document
is QMSum meeting transcripts rendered as ``Speaker: content`` lines, the meetings joined by blank
lines and repeated until long enough, then cut after its ``N``-th token.

Memory is the resident set (``VmHWM`` of /proc/self/status, reset before the call) above what the
process held just before it: the model's weights and the interpreter are the baseline, and a
throwaway add of a short text runs first, so weight pages and first-call buffers are in the
baseline too. The index's bytes are :meth:`Index.nbytes` (postings, keys and token tables, what
a save writes for them). ``--paths plain`` also measures the staging that ``scan_texts`` and
``add_scanned`` keep (every chunk until the commit, the path ``add_documents`` took before),
on the same document in the same run, with the peak of its scan alone (before its commit).

    python -m benchmarks.add_memory --tokens 50000 200000 1000000 --plain-up-to 200000
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir
from s3_retriever.index import staging

PATHS = ("add_documents", "plain")


def _status_bytes(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}")


def meeting_text(folder: Path) -> str:
    """Every QMSum validation meeting as ``Speaker: content`` lines, meetings apart by a blank
    line."""
    meetings = []
    with open(folder / "qmsum_val" / "val.jsonl") as handle:
        for line in handle:
            turns = json.loads(line)["meeting_transcripts"]
            meetings.append("\n".join(f"{t['speaker']}: {t['content']}" for t in turns))
    return "\n\n".join(meetings)


def long_document(tokenizer: Any, source: str, n_tokens: int) -> str:
    """``source`` repeated until it holds ``n_tokens`` tokens, cut after the last of them."""
    from s3_retriever.model.scan import tokenize

    per_copy = len(tokenize(tokenizer, source))
    text = "\n\n".join([source] * (n_tokens // per_copy + 1))
    ends = tokenize(tokenizer, text).ends
    return text[: int(ends[n_tokens - 1])]


def measure(n_tokens: int, path: str, folder: Path) -> dict[str, Any]:
    """Peak resident memory of one add of ``n_tokens`` tokens above the loaded model."""
    from benchmarks.real_corpus import quiet_retriever
    from s3_retriever import S3Retriever

    torch.set_num_threads(1)
    retriever = quiet_retriever()
    text = long_document(retriever.model.tokenizer, meeting_text(folder), n_tokens)
    warm = S3Retriever(retriever.model, retriever.bundle, retriever.config)
    warm.scanner.config = retriever.scanner.config
    warm.add_documents([text[:20_000]], ids=["warm"])
    del warm
    gc.collect()
    before = _status_bytes("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM to the current RSS
    start = time.perf_counter()
    phases = {}
    if path == "plain":
        scanned = retriever.scan_texts([text])
        phases["scan_peak_bytes"] = _status_bytes("VmHWM") - before
        retriever.add_scanned(scanned, ["doc"])
        del scanned
    else:
        # Staged whatever the length (add_documents stages only past STAGE_ABOVE_CHARS).
        staging.STAGE_ABOVE_CHARS = 0
        retriever.add_documents([text], ids=["doc"])
    seconds = time.perf_counter() - start
    peak = _status_bytes("VmHWM") - before
    tokens = retriever.index.corpus.n_positions
    parts = retriever.index.nbytes()
    index_bytes = sum(parts.values())
    return {
        "path": path,
        "tokens": tokens,
        "seconds": round(seconds, 1),
        "baseline_mib": round(before / 2**20, 1),
        "peak_bytes": peak,
        "index_bytes": index_bytes,
        "index_parts": parts,
        "peak_bytes_per_token": round(peak / tokens, 1),
        "index_bytes_per_token": round(index_bytes / tokens, 1),
        "peak_over_index": round(peak / index_bytes, 2),
        "peak_minus_twice_index_mib": round((peak - 2 * index_bytes) / 2**20, 1),
        **phases,
    }


def _in_subprocess(n_tokens: int, path: str, folder: Path) -> dict[str, Any]:
    root = Path(__file__).resolve().parent.parent
    command = [sys.executable, "-m", "benchmarks.add_memory", "--one", str(n_tokens), path]
    out = subprocess.run(
        [*command, "--data", str(folder)],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    print(json.dumps(result), flush=True)
    return result


def _marginal(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Peak and index bytes per extra token between the smallest and largest size of a path."""
    if len(rows) < 2:
        return None
    small, large = rows[0], rows[-1]
    extra = large["tokens"] - small["tokens"]
    peak = (large["peak_bytes"] - small["peak_bytes"]) / extra
    index = (large["index_bytes"] - small["index_bytes"]) / extra
    return {
        "path": small["path"],
        "from_tokens": small["tokens"],
        "to_tokens": large["tokens"],
        "peak_bytes_per_extra_token": round(peak, 1),
        "index_bytes_per_extra_token": round(index, 1),
        "ratio": round(peak / index, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--tokens", type=int, nargs="+", default=[50_000, 200_000])
    parser.add_argument(
        "--plain-up-to",
        type=int,
        default=200_000,
        help="measure the plain staging (scan_texts + add_scanned) up to this many tokens",
    )
    parser.add_argument("--one", nargs=2, metavar=("TOKENS", "PATH"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    folder = data_dir(args.data)
    if args.one:
        print(json.dumps(measure(int(args.one[0]), args.one[1], folder)))
        return
    rows = [_in_subprocess(n, "add_documents", folder) for n in sorted(args.tokens)]
    rows += [
        _in_subprocess(n, "plain", folder) for n in sorted(args.tokens) if n <= args.plain_up_to
    ]
    marginal = [m for p in PATHS if (m := _marginal([r for r in rows if r["path"] == p]))]
    table = markdown_table(
        [
            "path",
            "tokens",
            "seconds",
            "peak MiB",
            "peak B/token",
            "index B/token",
            "peak / index",
            "peak - 2x index (MiB)",
            "scan-only peak MiB",
        ],
        [
            [
                r["path"],
                r["tokens"],
                r["seconds"],
                round(r["peak_bytes"] / 2**20, 1),
                round(r["peak_bytes_per_token"]),
                round(r["index_bytes_per_token"]),
                f"{r['peak_over_index']:.2f}",
                r["peak_minus_twice_index_mib"],
                round(r["scan_peak_bytes"] / 2**20, 1) if "scan_peak_bytes" in r else "",
            ]
            for r in rows
        ],
    )
    marginal_table = markdown_table(
        ["path", "tokens", "peak B per extra token", "index B per extra token", "ratio"],
        [
            [
                m["path"],
                f"{m['from_tokens']} -> {m['to_tokens']}",
                round(m["peak_bytes_per_extra_token"]),
                round(m["index_bytes_per_extra_token"]),
                f"{m['ratio']:.2f}",
            ]
            for m in marginal
        ],
    )
    payload = {"settings": vars(args), "rows": rows, "marginal": marginal}
    write_result("add_memory", payload, f"{table}\n\nBetween sizes:\n\n{marginal_table}")


if __name__ == "__main__":
    main()
