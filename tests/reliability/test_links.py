"""Symbolic links: inputs cannot reach outside their folder, and index folders hold none."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from s3_retriever import IndexLoadError, S3Retriever
from s3_retriever.cli import main
from tests.reliability.bad_inputs import rewrite_manifest


def _documents(index: Path) -> dict[str, str]:
    documents = json.loads((index / "documents.json").read_text())
    return dict(zip(documents["ids"], documents["texts"], strict=True))


def test_cli_does_not_follow_links_out_of_an_input_folder(
    model_dir: Path, bundle_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A link to /proc/self/environ inside an input folder used to put the process's environment
    into documents.json. Links leaving the folder (to a file or a folder) are now skipped with a
    one-line warning; links that stay inside are read; --follow-links reads them all."""
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "key.txt").write_text("TOKEN=hunter2")
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "a.txt").write_text("The train leaves at seven.")
    (notes / "environ").symlink_to("/proc/self/environ")
    (notes / "key").symlink_to(secrets / "key.txt")
    (notes / "more").symlink_to(secrets, target_is_directory=True)
    (notes / "alias.txt").symlink_to(notes / "a.txt")  # stays inside: read
    out = tmp_path / "index"
    model = ["--model", str(model_dir), "--sae", str(bundle_dir)]
    assert main(["index", str(notes), "--out", str(out), "--quiet", *model]) == 0
    err = capsys.readouterr().err
    kept = _documents(out)
    assert sorted(Path(i).name for i in kept) == ["a.txt", "alias.txt"]
    assert not any("hunter2" in t or "PATH=" in t for t in kept.values())
    warnings = [line for line in err.splitlines() if "warning: skipped" in line]
    assert len(warnings) == 3 and all("--follow-links" in w for w in warnings), err
    followed = tmp_path / "followed"
    args = ["index", str(notes), "--out", str(followed), "--quiet", "--follow-links"]
    assert main([*args, *model]) == 0
    texts = _documents(followed).values()
    assert sum("hunter2" in t for t in texts) == 2  # through the file link and the folder link


def test_symlinked_corpus_folder_is_refused(saved: Path, model_dir: Path, tmp_path: Path) -> None:
    """corpus/ replaced by a link to a folder outside, its files dropped from the manifest, used
    to load and answer from files never checksummed. Any link in an index folder is refused."""
    outside = tmp_path / "outside-corpus"
    shutil.move(saved / "corpus", outside)
    (saved / "corpus").symlink_to(outside, target_is_directory=True)
    rewrite_manifest(
        saved,
        lambda m: m.__setitem__(
            "files", {k: v for k, v in m["files"].items() if not k.startswith("corpus/")}
        ),
    )
    with pytest.raises(IndexLoadError, match=r"corpus is a symbolic link"):
        S3Retriever.load(saved, model_path=model_dir)


def test_symlinked_file_inside_the_folder_is_refused(saved: Path, model_dir: Path) -> None:
    """Even a link to a file inside the folder, with a matching checksum, is refused: an index
    folder holds plain files only, so no reading can be redirected."""
    keys = sorted((saved / "keys").iterdir())
    target = keys[0]
    link = saved / "keys" / "copy.npy"
    link.symlink_to(target)
    rewrite_manifest(
        saved, lambda m: m["files"].__setitem__("keys/copy.npy", m["files"][f"keys/{target.name}"])
    )
    with pytest.raises(IndexLoadError, match=r"keys/copy\.npy is a symbolic link"):
        S3Retriever.load(saved, model_path=model_dir)
