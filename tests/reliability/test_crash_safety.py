"""Crash safety: SIGKILL during add_documents and save leaves the old or the new complete index."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path
from typing import Any

import pytest

from s3_retriever import IndexLoadError, S3Retriever
from s3_retriever.cli import main
from tests.reliability.crash_harness import (
    PHASES,
    RESUME,
    build_resume_start,
    build_start_index,
    kill_once,
    kill_resume_once,
    run,
)


@pytest.fixture(scope="module")
def start(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return build_start_index(tmp_path_factory.mktemp("crash"))


@pytest.mark.parametrize("phase", PHASES)
def test_sigkill_leaves_old_or_new_index(start: tuple[Path, Path], phase: str) -> None:
    """A child process is killed with SIGKILL at random moments of the phase; each time the
    folder loads, passes its checksums, and holds exactly the documents of a complete save."""
    index, model = start
    rng = random.Random(f"{phase}-{os.getpid()}")
    # One kill per phase keeps CI short (a child needs ~4 s to start); the slow test below and
    # `python -m tests.reliability.crash_harness` run many.
    result = kill_once(index, model, phase, rng)
    assert result.outcome in ("old", "new")


@pytest.mark.slow
def test_many_sigkills(tmp_path: Path) -> None:
    """The figure of docs/reliability.md: S3_RETRIEVER_KILLS kills (default 40), none broken."""
    kills = int(os.environ.get("S3_RETRIEVER_KILLS", "40"))
    results = run(kills, seed=0, workdir=tmp_path)
    assert len(results) == kills


def test_cli_append_continues_from_crash_backup(
    start: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A kill between save's two renames leaves only the backup; `index --append` used to start
    an empty index there (hiding the old documents). It now continues from the backup."""
    index, model = start
    copy = tmp_path / "index"
    S3Retriever.load(index, model_path=model).save(copy)
    before = S3Retriever.load(copy, model_path=model).doc_ids
    copy.rename(tmp_path / ".index.old-4242")
    new_file = tmp_path / "new.txt"
    new_file.write_text("A new document about trains and stations.", encoding="utf-8")
    status = main(["index", str(new_file), "--out", str(copy), "--append", "--model", str(model)])
    assert status == 0, capsys.readouterr().err
    assert S3Retriever.load(copy, model_path=model).doc_ids == [*before, str(new_file)]
    status = main(["index", str(new_file), "--out", str(copy), "--model", str(model)])
    assert status == 2 and "--append" in capsys.readouterr().err


def test_newest_backup_wins(start: tuple[Path, Path], tmp_path: Path) -> None:
    """Two crashed saves can each leave a backup; load() reads the newest, not the first by name."""
    index, model = start
    retriever = S3Retriever.load(index, model_path=model)
    old, new = tmp_path / ".index.old-10", tmp_path / ".index.old-9"
    retriever.save(old)
    retriever.add_documents(["One more document."], ids=["newest"])
    retriever.save(new)
    os.utime(old / "manifest.json", ns=(1, 1))
    assert sorted([old.name, new.name])[0] == old.name  # name order would pick the older one
    assert S3Retriever.load(tmp_path / "index", model_path=model).doc_ids[-1] == "newest"


def test_damaged_directory_messages(start: tuple[Path, Path], tmp_path: Path) -> Any:
    """load() names exactly what is wrong: the missing manifest, a file, or its checksum."""
    index, model = start
    copy = tmp_path / "index"
    S3Retriever.load(index, model_path=model).save(copy)
    (copy / "documents.json").write_text("{}")
    with pytest.raises(IndexLoadError, match=r"documents\.json does not match its checksum"):
        S3Retriever.load(copy, model_path=model)
    (copy / "manifest.json").unlink()
    with pytest.raises(IndexLoadError, match="manifest.json missing"):
        S3Retriever.load(copy, model_path=model)


def test_save_removes_what_killed_saves_left(start: tuple[Path, Path], tmp_path: Path) -> None:
    """Staging folders and backups of dead processes are removed by the next save; those of a
    live process (here: this one) and unrelated names are kept. A backup name a dead process
    used does not block a new save (containers often restart with the same pid)."""
    index, model = start
    retriever = S3Retriever.load(index, model_path=model)
    path = tmp_path / "index"
    retriever.save(path)
    dead = 2**22 + 12345  # above Linux's default pid_max, so no live process has it
    stale = [f".index.saving-{dead}-abc", f".index.old-{dead}", f".index.old-{dead}-1234abcd"]
    kept = [f".index.saving-{os.getpid()}-xyz", ".index.notes", ".other.old-1"]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    retriever.save(path)
    retriever.save(path)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index", *kept])
    assert S3Retriever.load(path, model_path=model).doc_ids == retriever.doc_ids


def test_sigkill_of_index_resume_leaves_a_prefix(start: tuple[Path, Path], tmp_path: Path) -> None:
    """`s3-retriever index DOCS --out INDEX --resume --commit-every 1` killed after a commit: the
    index holds the folder's first documents, each once; the docs' figure runs many of these."""
    _, model = start
    shutil.copytree(model.parent / "sae", tmp_path / "sae")
    docs, index = build_resume_start(tmp_path, model, n_docs=6)
    result = kill_resume_once(docs, index, model, random.Random(os.getpid()))
    assert result.phase == RESUME and result.after >= 3
