"""Atomic writes of files and folders: the old version or the new one, never a mix, and nothing
deleted that these helpers did not write."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from s3_retriever.files.atomic import remove_stale_siblings, staged_folder, write_json_atomic


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_a_json_file_is_replaced_whole_and_a_failed_write_leaves_it(tmp_path: Path) -> None:
    target = tmp_path / "settings.json"
    write_json_atomic(target, {"k": 1})
    write_json_atomic(target, {"k": 2, "text": "Zoë"})
    assert json.loads(target.read_text(encoding="utf-8")) == {"k": 2, "text": "Zoë"}
    with pytest.raises(TypeError):
        write_json_atomic(target, {"k": object()})
    assert json.loads(target.read_text(encoding="utf-8"))["k"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["settings.json"]


def test_a_staged_folder_replaces_the_old_one_or_leaves_it(tmp_path: Path) -> None:
    final = tmp_path / "index"
    with staged_folder(final) as staging:
        assert staging.parent == tmp_path and staging.name.startswith(".index.saving-")
        (staging / "a.txt").write_text("first")
    assert (final / "a.txt").read_text() == "first"
    with pytest.raises(RuntimeError, match="scan failed"), staged_folder(final) as staging:
        (staging / "a.txt").write_text("half")
        raise RuntimeError("scan failed")
    assert (final / "a.txt").read_text() == "first"
    with staged_folder(final) as staging:
        (staging / "b.txt").write_text("second")
    assert sorted(p.name for p in final.iterdir()) == ["b.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]  # no staging, no backup


def test_only_siblings_of_gone_processes_that_the_naming_marks_are_removed(
    tmp_path: Path,
) -> None:
    final = tmp_path / "index"
    final.mkdir()
    dead, alive = _dead_pid(), os.getpid()
    stale = [f".index.saving-{dead}-abc", f".index.old-{dead}-1234abcd"]
    kept = [
        f".index.saving-{alive}-abc",  # this process: a save under way
        ".index.saving-notapid-abc",
        f".index.copy-{dead}-abc",
        f".other.saving-{dead}-abc",
        f"index.saving-{dead}-abc",
    ]
    for name in stale + kept:
        (tmp_path / name).mkdir()
        (tmp_path / name / "file").write_text("x")
    remove_stale_siblings(final)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["index", *kept])
