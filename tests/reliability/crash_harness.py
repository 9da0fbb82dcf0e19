"""Kill a process with SIGKILL while it adds documents to a saved index or saves it, then check
that the folder holds either the old or the new complete index.

Used by tests/reliability/test_crash_safety.py, and runnable on its own for the figures in
docs/reliability.md::

    python -m tests.reliability.crash_harness --kills 40 --resume-kills 20

The child (``python -m tests.reliability.crash_harness child INDEX MODEL``) loads the index and
loops forever: add document k, save. Before each phase it prints a line, so the parent can aim a
kill at a random moment inside the phase it chose.

``--resume-kills`` also kills the command line itself, ``s3-retriever index DOCS --out INDEX
--resume --commit-every 1``, at random moments after one of its commits, and checks that the
index then holds the first documents of the folder, each once.
"""

from __future__ import annotations

import argparse
import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import IO

REPO_ROOT = Path(__file__).resolve().parents[2]
PHASES = ("add", "save")
RESUME = "index --resume"


def crash_doc(k: int) -> str:
    """Document number ``k``: a few hundred deterministic words, so every version is checkable."""
    words = ("river", "valley", "harvest", "library", "budget", "station", "coral", "journey")
    sentences = [
        f"Record {k}.{i} mentions the {words[(k + i) % 8]} and the {words[(k * 3 + i) % 8]}."
        for i in range(60)
    ]
    return " ".join(sentences)


def doc_id(k: int) -> str:
    return f"doc-{k:04d}"


def _child(index: Path, model: Path) -> None:
    from s3_retriever import S3Retriever

    retriever = S3Retriever.load(index, model_path=model)
    k = len(retriever)
    durations = {"add": 0.0, "save": 0.0}
    while True:
        for phase in PHASES:
            print(f"{phase} {k} {durations[phase]:.4f}", flush=True)
            start = time.perf_counter()
            if phase == "add":
                retriever.add_documents([crash_doc(k)], ids=[doc_id(k)])
            else:
                retriever.save(index)
            durations[phase] = time.perf_counter() - start
        print(f"saved {k}", flush=True)
        k += 1


@dataclass
class KillResult:
    """One SIGKILL and what the index folder held afterwards."""

    phase: str
    """Phase the kill was aimed at: ``add`` (document k being scanned) or ``save``."""
    delay_s: float
    """Seconds after the phase began."""
    before: int
    """Documents in the last index known complete before the kill."""
    after: int
    """Documents in the index loaded after the kill."""
    outcome: str
    """``old`` (the index before the phase) or ``new`` (the save completed)."""
    leftovers: int
    """Hidden staging or backup folders beside the index after the kill."""


def _lines(stream: IO[str]) -> Iterator[list[str]]:
    for line in stream:
        yield line.split()


def kill_once(index: Path, model: Path, phase: str, rng: random.Random) -> KillResult:
    """Start a child on ``index``, let it complete one add+save, then SIGKILL it at a random
    moment of the next ``phase``; returns what the folder holds afterwards (loads and checks it).

    Raises:
        AssertionError: if the folder holds anything but the old or new complete index.
    """
    from s3_retriever import S3Retriever

    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability.crash_harness", "child", str(index), str(model)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )
    assert child.stdout is not None
    complete: int | None = None
    try:
        for fields in _lines(child.stdout):
            if fields[0] == "saved":
                complete = int(fields[1]) + 1
            elif fields[0] == phase and complete is not None:
                # The phase's last duration bounds the delay, so kills spread over the whole phase.
                delay = rng.uniform(0.0, float(fields[2]))
                time.sleep(delay)
                break
        else:
            raise AssertionError(f"child exited early with status {child.wait()}")
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    restored = S3Retriever.load(index, model_path=model)
    after = len(restored)
    # A kill aimed late in ``add`` may land in the save that follows, so both are allowed.
    assert after in (complete, complete + 1), (phase, complete, after)
    assert restored.doc_ids == [doc_id(k) for k in range(after)]
    assert restored.index.corpus.texts == [crash_doc(k) for k in range(after)]
    assert restored.retrieve("Which record mentions the harvest?", token_budget=64)
    # Folders only: a killed save may also leave its writer-lock file, which the next save
    # takes over and deletes (s3_retriever/index/writer_lock.py).
    leftovers = [
        p for p in index.parent.iterdir() if p.name.startswith(f".{index.name}.") and p.is_dir()
    ]
    # The next save removes what killed processes left; only the last kill's remains can be here.
    assert len(leftovers) <= 2, leftovers
    return KillResult(
        phase,
        round(delay, 4),
        complete,
        after,
        "old" if after == complete else "new",
        len(leftovers),
    )


def build_start_index(workdir: Path) -> tuple[Path, Path]:
    """Tiny model, its SAEs, and a saved index of one document; returns (index, model)."""
    from s3_retriever import S3Retriever
    from s3_retriever.testing import save_tiny_bundle, save_tiny_model, tiny_config

    model = save_tiny_model(workdir / "tiny-llama")
    bundle = save_tiny_bundle(workdir / "sae", model.name)
    retriever = S3Retriever.from_pretrained(model, sae_path=bundle, config=tiny_config())
    retriever.add_documents([crash_doc(0)], ids=[doc_id(0)])
    index = workdir / "index"
    retriever.save(index)
    return index, model


def run(kills: int, seed: int, workdir: Path, resume_kills: int = 0) -> list[KillResult]:
    """``kills`` SIGKILLs alternating between the add and save phases on one index, then
    ``resume_kills`` of ``index --resume`` runs on another."""
    index, model = build_start_index(workdir)
    rng = random.Random(seed)
    results = [kill_once(index, model, PHASES[i % 2], rng) for i in range(kills)]
    if resume_kills:
        docs, resumed = build_resume_start(workdir, model, resume_kills * 4)
        results += [kill_resume_once(docs, resumed, model, rng) for _ in range(resume_kills)]
    return results


def build_resume_start(workdir: Path, model: Path, n_docs: int) -> tuple[Path, Path]:
    """A folder of ``n_docs`` text files and an index of its first one; returns (docs, index)."""
    from s3_retriever import S3Retriever
    from s3_retriever.testing import tiny_config

    docs = workdir / "docs"
    docs.mkdir()
    for k in range(n_docs):
        (docs / f"{doc_id(k)}.txt").write_text(crash_doc(k), encoding="utf-8")
    retriever = S3Retriever.from_pretrained(model, sae_path=workdir / "sae", config=tiny_config())
    first = docs / f"{doc_id(0)}.txt"
    retriever.add_documents([crash_doc(0)], ids=[str(first)], metadatas=[{"source": str(first)}])
    index = workdir / "resumed"
    retriever.save(index)
    return docs, index


def _manifest_digest(index: Path) -> str | None:
    from s3_retriever.files.hashing import sha256_file

    try:
        return sha256_file(index / "manifest.json")
    except OSError:
        return None


def kill_resume_once(docs: Path, index: Path, model: Path, rng: random.Random) -> KillResult:
    """Run ``s3-retriever index DOCS --out INDEX --resume --commit-every 1``, wait for its first
    commit, SIGKILL it at a random moment within one commit interval after, and check the index.

    Raises:
        AssertionError: unless the index holds the first N files of ``docs``, each once.
    """
    from s3_retriever import S3Retriever

    files = sorted(docs.iterdir())
    before = len(S3Retriever.load(index, model_path=model))
    assert before < len(files), "the resume corpus is used up; build it with more documents"
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    command = [sys.executable, "-m", "s3_retriever.cli", "index", str(docs), "--out", str(index)]
    command += ["--resume", "--commit-every", "1", "--model", str(model), "--quiet"]
    child = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, cwd=REPO_ROOT, env=env
    )
    try:
        seen = _manifest_digest(index)
        commits: list[float] = []
        while len(commits) < 2 and child.poll() is None:
            time.sleep(0.005)
            digest = _manifest_digest(index)
            if digest is not None and digest != seen:
                seen = digest
                commits.append(time.perf_counter())
        if child.poll() is not None:
            raise AssertionError(f"index --resume exited early with status {child.returncode}")
        delay = rng.uniform(0.0, commits[1] - commits[0])
        time.sleep(delay)
        child.send_signal(signal.SIGKILL)
    finally:
        child.kill()
        child.wait()
    restored = S3Retriever.load(index, model_path=model)
    after = len(restored)
    assert after >= before + 2, (before, after)
    assert restored.doc_ids == [str(f) for f in files[:after]], "not a prefix, or duplicated"
    assert restored.index.corpus.texts == [crash_doc(k) for k in range(after)]
    leftovers = [p for p in index.parent.iterdir() if p.name.startswith(f".{index.name}.")]
    leftover_folders = [p for p in leftovers if p.is_dir()]
    assert len(leftover_folders) <= 2, leftover_folders
    # ``before`` counts the documents at the last commit seen before the kill.
    last_seen = before + 2
    return KillResult(
        RESUME,
        round(delay, 4),
        last_seen,
        after,
        "old" if after == last_seen else "new",
        len(leftover_folders),
    )


def _main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--kills", type=int, default=40)
    parser.add_argument("--resume-kills", type=int, default=0)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    import tempfile

    from benchmarks.common import markdown_table, write_result

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        results = run(args.kills, args.seed, Path(tmp), resume_kills=args.resume_kills)
        elapsed = time.perf_counter() - start
    rows = []
    for phase in (*PHASES, RESUME):
        mine = [r for r in results if r.phase == phase]
        rows.append(
            [
                phase,
                len(mine),
                sum(r.outcome == "old" for r in mine),
                sum(r.outcome == "new" for r in mine),
                0,  # any broken index raised above, so reaching here means none
                max((r.leftovers for r in mine), default=0),
            ]
        )
    table = markdown_table(
        ["killed during", "kills", "old index", "new index", "broken", "max leftover folders"],
        rows,
    )
    write_result(
        "crash",
        {
            "kills": args.kills,
            "resume_kills": args.resume_kills,
            "seed": args.seed,
            "seconds": round(elapsed, 1),
            "results": [asdict(r) for r in results],
        },
        table,
    )


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "child":
        _child(Path(sys.argv[2]), Path(sys.argv[3]))
    else:
        _main()
