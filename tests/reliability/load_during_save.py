"""Load an index over and over while another process saves it, and count false damage reports.

Used by tests/reliability/test_load_during_save.py, and runnable on its own for the figure in
docs/reliability.md::

    python -m tests.reliability.load_during_save --loads 1000

The saver (``python -m tests.reliability.load_during_save saver INDEX MODEL``) loads the index
and loops forever: add a document, save, delete it, save, so every save publishes different
files. The parent meanwhile reads the whole index (every file verified against the manifest of
the generation it read, documents and arrays loaded: :func:`s3_retriever.index.storage.read_index`)
and, every ``full_every`` reads, loads it as a retriever with the model. Each read must succeed
and hold one of the two states the saver alternates between.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

from tests.reliability.crash_harness import REPO_ROOT, build_start_index, crash_doc, doc_id


def _saver(index: Path, model: Path) -> None:
    from s3_retriever import S3Retriever

    retriever = S3Retriever.load(index, model_path=model)
    extra = doc_id(len(retriever))
    text = crash_doc(len(retriever))
    print("ready", flush=True)
    saves = 0
    while True:
        retriever.add_documents([text], ids=[extra])
        retriever.save(index)
        retriever.delete([extra])
        retriever.save(index)
        saves += 2
        print(f"saves {saves}", flush=True)


@dataclass
class LoadReport:
    """What the loads saw while the saver ran."""

    loads: int
    """Verified reads of the whole index."""
    full_loads: int
    """Of which full ``S3Retriever.load`` calls (model, checks, retriever built)."""
    false_damage: int
    """Loads that raised (any error counts: the index was never damaged)."""
    states_seen: dict[str, int]
    """How many loads saw each document count (both states should appear)."""
    saves_during: int
    """Saves the saver completed while the loads ran."""
    seconds: float


def run(loads: int, workdir: Path, full_every: int = 50) -> LoadReport:
    """``loads`` loads of an index that a child process keeps saving; see the module doc."""
    from s3_retriever import S3Retriever
    from s3_retriever.index.storage import read_index

    index, model = build_start_index(workdir)
    base = len(S3Retriever.load(index, model_path=model))
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    saver = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "tests.reliability.load_during_save",
            "saver",
            str(index),
            str(model),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert saver.stdout is not None
    try:
        assert saver.stdout.readline().strip() == "ready", "the saver did not start"
        failures: list[str] = []
        states: dict[str, int] = {}
        full = 0
        start = time.perf_counter()
        for i in range(loads):
            try:
                if i % full_every == full_every - 1:
                    retriever = S3Retriever.load(index, model_path=model)
                    ids, texts = retriever.doc_ids, retriever.index.corpus.texts
                    full += 1
                else:
                    stored = read_index(index)
                    assert stored.documents is not None
                    ids, texts = stored.documents.doc_ids, stored.documents.texts
            except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                failures.append(f"{type(exc).__name__}: {exc}")
                continue
            n = len(ids)
            if n not in (base, base + 1) or ids != [doc_id(k) for k in range(n)]:
                failures.append(f"load {i} saw documents {ids}")
            elif texts != [crash_doc(k) for k in range(n)]:
                failures.append(f"load {i} saw texts that no save wrote")
            states[str(n)] = states.get(str(n), 0) + 1
        seconds = time.perf_counter() - start
    finally:
        saver.kill()
        saver.wait()
        remaining = saver.stdout.read()
    saves = [int(line.split()[1]) for line in remaining.splitlines() if line.startswith("saves")]
    if failures:
        raise AssertionError(f"{len(failures)} of {loads} loads failed; first: {failures[0]}")
    return LoadReport(loads, full, len(failures), states, max(saves, default=0), round(seconds, 1))


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--loads", type=int, default=1000)
    parser.add_argument("--full-every", type=int, default=50)
    args = parser.parse_args()

    import tempfile

    from benchmarks.common import markdown_table, write_result

    with tempfile.TemporaryDirectory() as tmp:
        report = run(args.loads, Path(tmp), args.full_every)
    table = markdown_table(
        ["loads", "of which full loads", "saves meanwhile", "false damage", "states seen"],
        [
            [
                report.loads,
                report.full_loads,
                report.saves_during,
                report.false_damage,
                ", ".join(f"{n} docs: {c}" for n, c in sorted(report.states_seen.items())),
            ]
        ],
    )
    write_result("load_during_save", {**asdict(report), "full_every": args.full_every}, table)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "saver":
        _saver(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        _main()
