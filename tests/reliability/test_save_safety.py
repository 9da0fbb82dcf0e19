"""Saves never delete what s3-retriever did not write, one writer at a time, and loads during
saves see a complete index (issue: data loss cases)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from s3_retriever import S3Retriever
from s3_retriever.cli import main
from s3_retriever.errors import IndexBusyError, SaveTargetError
from s3_retriever.index.writer_lock import lock_path, writer_lock
from tests.reliability.crash_harness import REPO_ROOT
from tests.reliability.load_during_save import run as loads_during_saves


def _child(code: str, *args: str) -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(REPO_ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=REPO_ROOT,
        env=env,
    )


def test_save_onto_an_existing_file_is_refused(indexed: S3Retriever, tmp_path: Path) -> None:
    """save("notes.txt") used to hide the file in .notes.txt.old-PID-*, which a later save
    removed. Now it is refused and the file is left exactly as it was."""
    notes = tmp_path / "notes.txt"
    notes.write_text("my notes")
    with pytest.raises(SaveTargetError, match="existing file"):
        indexed.save(notes)
    assert notes.read_text() == "my notes"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]


def test_save_onto_a_folder_of_other_files_is_refused(indexed: S3Retriever, tmp_path: Path) -> None:
    """A non-empty folder that is not an index used to be deleted with everything in it."""
    folder = tmp_path / "photos"
    (folder / "2024").mkdir(parents=True)
    (folder / "2024" / "a.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(SaveTargetError, match="no s3-retriever index"):
        indexed.save(folder)
    assert (folder / "2024" / "a.jpg").read_bytes() == b"\xff\xd8"
    empty = tmp_path / "empty"
    empty.mkdir()
    indexed.save(empty)  # an empty folder holds nothing to lose
    assert (empty / "manifest.json").is_file()


def test_file_added_to_an_index_folder_is_not_deleted(indexed: S3Retriever, saved: Path) -> None:
    """A file a user put into an index folder is not part of the index: saving over the folder
    would delete it, so the save is refused and the file kept."""
    (saved / "README.txt").write_text("do not lose me")
    with pytest.raises(SaveTargetError, match="README.txt is not part of the index"):
        indexed.save(saved)
    assert (saved / "README.txt").read_text() == "do not lose me"


def test_cli_index_out_of_its_own_input_is_refused(
    model_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """`s3-retriever index notes --out notes` used to delete the documents it indexed; `--out`
    of a folder of other files used to delete them. Both are refused before any scan."""
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("The train leaves at seven.")
    assert main(["index", str(notes), "--out", str(notes), "--model", str(model_dir)]) == 2
    assert "overlaps the input" in capsys.readouterr().err
    other = tmp_path / "other"
    other.mkdir()
    (other / "keep.txt").write_text("keep")
    status = main(["index", str(notes), "--out", str(other), "--model", str(model_dir)])
    err = capsys.readouterr().err
    assert status == 2 and "no s3-retriever index" in err and len(err.splitlines()) == 1
    assert (notes / "a.txt").is_file() and (other / "keep.txt").read_text() == "keep"


def test_second_writer_is_refused_instead_of_dropping_documents(
    saved: Path, model_dir: Path
) -> None:
    """Two processes load one index and both add and save: the last writer used to win and the
    other's documents vanished. The second save is now refused, and the first's documents stay."""
    mine = S3Retriever.load(saved, model_path=model_dir)
    other = _child(
        """
        import sys
        from s3_retriever import S3Retriever
        r = S3Retriever.load(sys.argv[1], model_path=sys.argv[2])
        r.add_documents(["Saved by the other process."], ids=["theirs"])
        r.save(sys.argv[1])
        """,
        str(saved),
        str(model_dir),
    )
    assert other.wait(timeout=120) == 0, other.stderr.read() if other.stderr else ""
    mine.add_documents(["Saved by this process."], ids=["mine"])
    with pytest.raises(SaveTargetError, match="another writer"):
        mine.save(saved)
    assert "theirs" in S3Retriever.load(saved, model_path=model_dir).doc_ids


def test_writer_lock_makes_a_second_writer_wait(indexed: S3Retriever, saved: Path) -> None:
    """Another process holds the writer lock: a save waits until it lets go (documented in
    docs/reliability.md), and a writer that will not wait gets IndexBusyError."""
    holder = _child(
        """
        import sys, time
        from pathlib import Path
        from s3_retriever.index.writer_lock import writer_lock
        with writer_lock(Path(sys.argv[1])):
            print("held", flush=True)
            time.sleep(1.5)
        """,
        str(saved),
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
    with (
        pytest.raises(IndexBusyError, match="another process is saving"),
        writer_lock(saved, wait_s=0.2),
    ):
        pass
    start = time.perf_counter()
    indexed.save(saved)
    waited = time.perf_counter() - start
    assert holder.wait(timeout=60) == 0
    assert waited > 0.5, waited  # it waited for the holder rather than saving beside it
    assert not lock_path(saved).exists()  # the lock file goes with its last holder


def test_loads_during_saves_never_report_false_damage(tmp_path: Path) -> None:
    """500 loads (every file verified, documents and arrays read; every 50th a full
    S3Retriever.load) against a process that keeps saving: about 1 in 100 used to fail with a
    false "damaged ... Rebuild the index". Each must now see one complete state."""
    report = loads_during_saves(500, tmp_path, full_every=50)
    assert report.false_damage == 0
    assert report.saves_during >= 4, report  # the saver really ran meanwhile
    assert len(report.states_seen) == 2, report  # and loads saw both of its states


def test_cli_full_disk_is_one_line(saved: Path, model_dir: Path, tmp_path: Path) -> None:
    """A write that fails for lack of space (here a file-size limit: EFBIG, the same OSError
    path as ENOSPC) prints one line and no traceback, and the index keeps its last save."""
    new = tmp_path / "new.txt"
    new.write_text("A new document about ocean coral and harbours. " * 40)
    before = S3Retriever.load(saved, model_path=model_dir).doc_ids
    child = _child(
        """
        import resource, signal, sys
        from s3_retriever.cli import main
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a failed write, not a killed process
        resource.setrlimit(resource.RLIMIT_FSIZE, (2048, 2048))
        sys.exit(main(sys.argv[1:]))
        """,
        "index",
        str(new),
        "--out",
        str(saved),
        "--append",
        "--quiet",
        "--model",
        str(model_dir),
    )
    _, err = child.communicate(timeout=120)
    lines = [line for line in err.splitlines() if line.startswith("s3-retriever")]
    assert child.returncode == 2, err
    assert "Traceback" not in err and len(lines) == 1, err
    assert "File too large" in lines[0] and "--resume" in lines[0]
    assert S3Retriever.load(saved, model_path=model_dir).doc_ids == before
