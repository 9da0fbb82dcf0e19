"""Memory of scanning and indexing one very long document with the tiny model.

Run in a fresh process per size, so the numbers are that size's alone::

    python -m tests.reliability.big_document 2000000 scan
    python -m tests.reliability.big_document 2000000 add

prints JSON: tokens, seconds and peak memory above what the process held before the phase. For
``scan`` (the model scan alone) it must not grow with length; for ``add`` (add_documents) it
must stay flat per token: the index and its staging arrays grow linearly, nothing faster.
"""

from __future__ import annotations

import json
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

CHUNK_SIZE = 512
BATCH_SIZE = 8


def _peak_rss_during(work: Callable[[], Any]) -> tuple[int, Any]:
    """Highest resident set size (bytes) while ``work`` runs.

    Linux keeps the peak as VmHWM and resets it when "5" is written to /proc/self/clear_refs,
    so the peak of one phase is read exactly, with no sampling thread to slow the work down.
    """
    Path("/proc/self/clear_refs").write_text("5")
    result = work()
    return _status_kib("VmHWM") * 1024, result


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"/proc/self/status has no {field}")


def _rss() -> int:
    return _status_kib("VmRSS") * 1024


def measure(n_tokens: int, phase: str) -> dict[str, Any]:
    """Peak memory of one ``phase`` over a document of ``n_tokens``: ``scan`` (the model scan
    alone) or ``add`` (add_documents: tokenise, scan, encode, commit)."""
    from s3_retriever.model.scan import ScanConfig, tokenize
    from s3_retriever.testing import TRAINING_TEXT, one_thread, tiny_retriever

    with one_thread(), tempfile.TemporaryDirectory() as tmp:
        retriever = tiny_retriever(
            Path(tmp),
            scan=ScanConfig(chunk_size=CHUNK_SIZE, batch_size=BATCH_SIZE, show_progress=False),
        )
        block = " ".join(TRAINING_TEXT[:5]) + "\n"
        per_block = len(tokenize(retriever.model.tokenizer, block))
        text = block * (n_tokens // per_block + 1)
        doc = tokenize(retriever.model.tokenizer, text)
        doc = type(doc)(doc.input_ids[:n_tokens], doc.starts[:n_tokens], doc.ends[:n_tokens])
        text = text[: int(doc.ends[-1])]
        if phase == "add":
            del doc  # add_documents tokenises the text itself
        before = _rss()
        start = time.perf_counter()
        if phase == "scan":
            peak, tokens = _peak_rss_during(
                lambda: sum(c.keys[1].shape[0] for c in retriever.scanner.scan([doc]))
            )
        else:
            peak, _ = _peak_rss_during(lambda: retriever.add_documents([text], ids=["big"]))
            tokens = retriever.index.corpus.n_positions
        seconds = time.perf_counter() - start
        index_bytes = sum(retriever.index.nbytes().values())
    return {
        "phase": phase,
        "tokens": tokens,
        "seconds": round(seconds, 2),
        "working_mib": round((peak - before) / 2**20, 1),
        "peak_bytes_per_token": round((peak - before) / tokens, 1),
        "index_bytes_per_token": round(index_bytes / tokens, 1),
    }


def measure_in_subprocess(n_tokens: int, phase: str) -> dict[str, Any]:
    """:func:`measure` in a fresh interpreter, so earlier allocations do not hide this one's."""
    import os
    import subprocess

    root = Path(__file__).resolve().parents[2]
    out = subprocess.run(
        [sys.executable, "-m", "tests.reliability.big_document", str(n_tokens), phase],
        check=True,
        capture_output=True,
        text=True,
        cwd=root,
        env={**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"},
    )
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


if __name__ == "__main__":
    print(json.dumps(measure(int(sys.argv[1]), sys.argv[2])))
