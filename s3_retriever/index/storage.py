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
                         compact postings (see :mod:`s3_retriever.index`)
    sae/                 a copy of the SAE bundle the index was built with

A save is written to a sibling staging folder and swapped in with renames
(:func:`s3_retriever.files.atomic.staged_folder`), so a crash at any moment leaves either the old
or the new complete index. It holds the folder's writer lock
(:mod:`s3_retriever.index.writer_lock`) and refuses to replace anything s3-retriever did not write
(:func:`s3_retriever.index.folder.check_save_target`). A load reads one generation of the folder
even while saves replace it (:mod:`s3_retriever.index.folder`).

Loading verifies every checksum, then memory-maps the large arrays (keys and postings): the
operating system pages them in as searches touch them, so a big index opens without a copy in
memory. Format 1 indexes (int32 positions, float16 activations) are read and re-encoded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.errors import IndexLoadError, S3RetrieverError, SaveTargetError
from s3_retriever.files.atomic import fsync_tree, remove_stale_siblings, staged_folder
from s3_retriever.files.hashing import sha256_file
from s3_retriever.files.untrusted import UntrustedFileError, read_json_file
from s3_retriever.index.arrays import load_npy
from s3_retriever.index.corpus import Corpus
from s3_retriever.index.folder import check_save_target, pinned, plain_files, still_names
from s3_retriever.index.index import Index
from s3_retriever.index.manifest import Manifest, SchemaError, parse_manifest_fields
from s3_retriever.index.writer_lock import writer_lock
from s3_retriever.sae.bundle import SAEBundle

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)


def index_key(path: str | os.PathLike[str]) -> Path:
    """The absolute path a save or load of ``path`` addresses (a link at the last part is kept,
    so that save can refuse it rather than write where it points)."""
    absolute = Path(os.path.abspath(path))
    return absolute.parent.resolve() / absolute.name


def save_index(
    index: Index,
    header: Mapping[str, Any],
    bundle: SAEBundle,
    path: Path,
    keep_clusters_above: int | None = None,
) -> None:
    """Write ``index``, a copy of ``bundle`` and a manifest to ``path`` atomically, holding the
    folder's writer lock.

    ``header`` is what the caller records about how the index was built (model, tokenizer, SAE
    checksum, settings, heads); the manifest adds the format version, the sizes and every file's
    checksum. ``keep_clusters_above``: see :meth:`Index.write`.

    Raises:
        SaveTargetError: ``path`` is a file, a link, a folder of other files, or an index that
            another writer saved since this index was read or written there.
    """
    path = index_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        check_save_target(path)
        _check_unchanged(index, path)
        with staged_folder(path) as staging:
            _write_contents(index, header, bundle, staging, keep_clusters_above)
            fsync_tree(staging)
            digest = sha256_file(staging / "manifest.json")
        index.versions[str(path)] = digest
        # The index at path is newer than any backup a killed save left, so none is needed.
        remove_stale_siblings(path)


def _check_unchanged(index: Index, path: Path) -> None:
    """Refuse to replace an index that changed since this one was last read or written there:
    the other writer's documents would vanish (last writer wins)."""
    known = index.versions.get(str(path))
    if known is None or not has_index(path):
        return
    current = sha256_file(_resolve_existing(path) / "manifest.json")
    if current != known:
        raise SaveTargetError(
            f"{path} was saved by another writer since this retriever read or wrote it; saving "
            f"would drop that writer's documents. Load the index again, add your documents, "
            f"and save."
        )


def _write_contents(
    index: Index,
    header: Mapping[str, Any],
    bundle: SAEBundle,
    folder: Path,
    keep_clusters_above: int | None,
) -> None:
    index.write(folder, keep_clusters_above)
    # The copy's checksum, not the one the header was built with: saving writes the bundle
    # anew (JSON formatting, tensor layout), so a shipped bundle's files hash differently.
    sae_checksum = bundle.save(folder / "sae")
    files = {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        **header,
        "sae_checksum": sae_checksum,
        "n_documents": len(index),
        "n_positions": index.n_positions,
        "files": files,
    }
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=1))


_RESOLVE_ROUNDS = 5
"""Looks for an index at the path and in crash backups: a save running meanwhile can move the
index from one to the other between two looks, never for more than one rename."""
_READ_ATTEMPTS = 20
"""Saves that may replace the index while one load reads it before the load gives up."""


def _resolve_existing(path: Path) -> Path:
    for _ in range(_RESOLVE_ROUNDS):
        if (path / "manifest.json").is_file():
            return path
        backups = [
            b for b in path.parent.glob(f".{path.name}.old-*") if (b / "manifest.json").is_file()
        ]
        if backups:
            # Several crashed saves can each leave a backup; the newest holds the latest index.
            return max(backups, key=_mtime_or_zero)
    raise IndexLoadError(
        f"{path} holds no s3-retriever index (manifest.json missing). Build one with "
        f"`s3-retriever index FILE... --out {path}`."
    )


def _mtime_or_zero(backup: Path) -> int:
    try:
        return (backup / "manifest.json").stat().st_mtime_ns
    except OSError:  # removed by a finishing save since it was listed
        return 0


def has_index(path: Path) -> bool:
    """Whether ``path`` holds an index, or a crash left one in a backup that load() would read."""
    try:
        _resolve_existing(path)
    except IndexLoadError:
        return False
    return True


@dataclass
class StoredIndex:
    """Everything one generation of an index folder holds, read and verified, before a model
    is involved."""

    folder: Path
    """The folder read (the index, or the crash backup that stood in for it)."""
    raw_manifest: dict[str, Any]
    manifest: Manifest
    manifest_digest: str
    """sha256 of manifest.json: which version of the index this is."""
    documents: Corpus | None = None
    """Ids, texts and metadata (the tables are in :attr:`arrays`)."""
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """Every .npy file by its name in the folder (``keys/L1_H0_codes.npy``)."""
    bundle: SAEBundle | None = None


def read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """Find the index folder (or a crash backup of it), read and verify its manifest and files."""
    stored = _read_consistent(Path(path), with_contents=False)
    return stored.folder, stored.raw_manifest


def read_index(path: Path) -> StoredIndex:
    """Every file of the index at ``path``, verified and read from one generation of it.

    A save that replaces the folder meanwhile makes this read the new generation, never a mix
    (:mod:`s3_retriever.index.folder`).
    """
    return _read_consistent(Path(path), with_contents=True)


def _read_consistent(path: Path, with_contents: bool) -> StoredIndex:
    for _ in range(_READ_ATTEMPTS):
        folder = _resolve_existing(path)
        try:
            with pinned(folder) as (root, identity):
                try:
                    stored = _read_generation(root, folder, with_contents)
                except (S3RetrieverError, OSError) as exc:
                    if not _still_current(path, identity):
                        continue  # a save replaced the folder mid-read: read the new one
                    raise _named(exc, root, folder) from exc
                if root == folder and not _still_current(path, identity):
                    continue  # read by name without /proc: a save may have mixed generations
                return stored
        except FileNotFoundError:
            continue  # the folder was removed between resolving and opening it
    raise IndexLoadError(
        f"{path} was replaced by {_READ_ATTEMPTS} saves in a row while it was being read; load "
        f"it again when saves pause."
    )


def _still_current(path: Path, identity: tuple[int, int]) -> bool:
    try:
        return still_names(_resolve_existing(path), identity)
    except IndexLoadError:
        return False


def _named(exc: BaseException, root: Path, folder: Path) -> BaseException:
    """``exc`` with the folder's own name where the open-folder path stood."""
    if isinstance(exc, OSError):
        where = str(exc.filename).replace(str(root), str(folder)) if exc.filename else folder
        return IndexLoadError(f"cannot read {where}: {exc.strerror or exc}")
    if root == folder:
        return exc
    return type(exc)(str(exc).replace(str(root), str(folder)))


def _read_generation(root: Path, folder: Path, with_contents: bool) -> StoredIndex:
    try:
        raw = read_json_file(root / "manifest.json", bounded_ints=True)
    except UntrustedFileError as exc:
        raise IndexLoadError(f"{exc}; the index is damaged. Rebuild the index.") from exc
    if not isinstance(raw, dict) or raw.get("format_version") not in _READABLE_VERSIONS:
        version = raw.get("format_version") if isinstance(raw, dict) else None
        raise IndexLoadError(
            f"{folder} is index format {version!r}; this s3-retriever reads formats "
            f"{', '.join(map(str, _READABLE_VERSIONS))}. Rebuild the index with this version."
        )
    try:
        manifest = parse_manifest_fields(raw)
    except SchemaError as exc:
        raise IndexLoadError(
            f"{folder}/manifest.json is damaged: {exc}. Rebuild the index."
        ) from exc
    files = manifest.files
    # Every file load() reads must be verified, so none may sit in the folder unlisted, and none
    # may be a link (plain_files refuses them): a link could lead past the checksums.
    present = plain_files(root, folder)
    unlisted = sorted(present - set(files) - {"manifest.json"})
    if unlisted:
        raise IndexLoadError(
            f"{folder} is damaged: {unlisted[0]} is not listed in manifest.json, so it cannot be "
            f"verified. Rebuild the index."
        )
    for name, digest in files.items():
        if name not in present:
            raise IndexLoadError(f"{folder} is damaged: {name} is missing. Rebuild the index.")
        if sha256_file(root / name) != digest:
            raise IndexLoadError(
                f"{folder} is damaged: {name} does not match its checksum. Rebuild the index."
            )
    stored = StoredIndex(folder, raw, manifest, sha256_file(root / "manifest.json"))
    if with_contents:
        stored.bundle = SAEBundle.load(root / "sae")
        stored.documents = Corpus.read_documents(root)
        for name in sorted(files):
            if name.endswith(".npy"):
                # Keys, postings and cluster assignments are memory-mapped: the operating system
                # pages them in as searches touch them.
                stored.arrays[name] = load_npy(root / name, mmap=not name.startswith("corpus/"))
    return stored


def fill_index(index: Index, stored: StoredIndex, path: str | os.PathLike[str]) -> None:
    """Fill ``index`` (built empty with the saved settings) from a :func:`read_index` result,
    and remember the version read, for the next save to ``path``."""
    assert stored.documents is not None
    manifest = stored.manifest
    index.read(
        stored.folder,
        stored.documents,
        stored.arrays,
        manifest.format_version,
        manifest.n_documents,
        manifest.n_positions,
    )
    index.versions[str(index_key(path))] = stored.manifest_digest
