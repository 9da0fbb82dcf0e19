"""Saving and loading an index as a versioned directory of .npy / JSON files, never pickle.

Layout::

    manifest.json        format version, model + tokenizer fingerprints, SAE checksum,
                         retriever config, heads, and the sha256 of every other file
    documents.json       ids, texts and metadata
    corpus/*.npy         token and unit tables
    keys/L{l}_H{h}_{codes,scales}.npy
    clusters/L{l}_H{h}_{means,variance,spread,cluster_of}.npy
                         k-means clusters of those keys, for indexes past the clustered-search
                         threshold (see :mod:`s3_retriever.index.clusters`)
    postings/L{l}_H{h}_{indptr,byteptr,position_bytes,activation_codes}.npy
                         compact postings (see :mod:`s3_retriever.index.postings`)
    sae/                 a copy of the SAE bundle the index was built with

A save is written to a sibling staging folder and swapped in with renames, so a crash at any
moment leaves either the old or the new complete index.

Loading verifies every checksum, then memory-maps the large arrays (keys and postings): the
operating system pages them in as searches touch them, so a big index opens without a copy in
memory. Format 1 indexes (int32 positions, float16 activations) are read and re-encoded.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from s3_retriever.errors import IndexLoadError
from s3_retriever.files.hashing import sha256_file
from s3_retriever.files.untrusted import (
    UntrustedFileError,
    check_manifest_fields,
    read_json_file,
)
from s3_retriever.index.index import Index
from s3_retriever.sae.bundle import SAEBundle

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_index(
    index: Index,
    header: Mapping[str, Any],
    bundle: SAEBundle,
    path: Path,
    keep_clusters_above: int | None = None,
) -> None:
    """Write ``index``, a copy of ``bundle`` and a manifest to ``path`` atomically.

    ``header`` is what the caller records about how the index was built (model, tokenizer, SAE
    checksum, settings, heads); the manifest adds the format version, the sizes and every file's
    checksum. ``keep_clusters_above``: see :meth:`Index.write`.
    """
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.saving-{os.getpid()}-", dir=path.parent))
    try:
        _write_contents(index, header, bundle, staging, keep_clusters_above)
        _fsync_tree(staging)
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    _remove_stale_siblings(path)


def _remove_stale_siblings(path: Path) -> None:
    """Delete staging folders and backups left beside ``path`` by killed processes.

    Only folders whose process is gone are removed: a live one may be another saver mid-way.
    The index at ``path`` is newer than any backup, so none of them is needed any more.
    """
    for sibling in path.parent.glob(f".{path.name}.*"):
        kind, _, rest = sibling.name[len(path.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind in ("saving", "old") and pid.isdigit() and not _process_alive(int(pid)):
            shutil.rmtree(sibling, ignore_errors=True)


def _process_alive(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True


def _write_contents(
    index: Index,
    header: Mapping[str, Any],
    bundle: SAEBundle,
    folder: Path,
    keep_clusters_above: int | None,
) -> None:
    index.write(folder, keep_clusters_above)
    bundle.save(folder / "sae")
    files = {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        **header,
        "n_documents": len(index),
        "n_positions": index.n_positions,
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


def _swap_in(staging: Path, path: Path) -> None:
    """Replace ``path`` by ``staging`` with renames only."""
    if not path.exists():
        os.replace(staging, path)
        return
    # Unique even when a restarted process gets the pid of one that crashed here before.
    backup = path.with_name(f".{path.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(path, backup)
    # A crash between these two renames leaves only the backup; load() falls back to it.
    os.replace(staging, path)
    shutil.rmtree(backup, ignore_errors=True)


def _resolve_existing(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    backups = [
        b for b in path.parent.glob(f".{path.name}.old-*") if (b / "manifest.json").is_file()
    ]
    if backups:
        # Several crashed saves can each leave a backup; the newest holds the latest index.
        return max(backups, key=lambda b: (b / "manifest.json").stat().st_mtime_ns)
    raise IndexLoadError(
        f"{path} holds no s3-retriever index (manifest.json missing). Build one with "
        f"`s3-retriever index FILE... --out {path}`."
    )


def has_index(path: Path) -> bool:
    """Whether ``path`` holds an index, or a crash left one in a backup that load() would read."""
    try:
        _resolve_existing(path)
    except IndexLoadError:
        return False
    return True


def read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """Find the index folder (or a crash backup of it), read and verify its manifest and files."""
    folder = _resolve_existing(path)
    try:
        manifest = read_json_file(folder / "manifest.json")
    except UntrustedFileError as exc:
        raise IndexLoadError(f"{exc}; the index is damaged. Rebuild the index.") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") not in _READABLE_VERSIONS:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise IndexLoadError(
            f"{folder} is index format {version!r}; this s3-retriever reads formats "
            f"{', '.join(map(str, _READABLE_VERSIONS))}. Rebuild the index with this version."
        )
    try:
        check_manifest_fields(manifest)
    except UntrustedFileError as exc:
        raise IndexLoadError(
            f"{folder}/manifest.json is damaged: {exc}. Rebuild the index."
        ) from exc
    files = manifest["files"]
    # Every file load() reads must be verified, so none may sit in the folder unlisted.
    present = {p.relative_to(folder).as_posix() for p in folder.rglob("*") if not p.is_dir()}
    unlisted = sorted(present - set(files) - {"manifest.json"})
    if unlisted:
        raise IndexLoadError(
            f"{folder} is damaged: {unlisted[0]} is not listed in manifest.json, so it cannot be "
            f"verified. Rebuild the index."
        )
    root = folder.resolve()
    for name, digest in files.items():
        target = (folder / name).resolve()
        if root not in target.parents:
            raise IndexLoadError(f"manifest entry {name!r} points outside {folder}; refused.")
        if not target.is_file():
            raise IndexLoadError(f"{folder} is damaged: {name} is missing. Rebuild the index.")
        if sha256_file(target) != digest:
            raise IndexLoadError(
                f"{folder} is damaged: {name} does not match its checksum. Rebuild the index."
            )
    return folder, manifest


def read_index(index: Index, folder: Path, manifest: Mapping[str, Any]) -> None:
    """Fill ``index`` (built empty with the saved settings) from a folder :func:`read_manifest`
    verified."""
    index.read(folder, manifest["format_version"], manifest["n_documents"], manifest["n_positions"])
