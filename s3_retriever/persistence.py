"""Saving and loading an index as a versioned directory of .npy / JSON files, never pickle.

Layout::

    manifest.json        format version, model + tokenizer fingerprints, SAE checksum,
                         retriever config, heads, and the sha256 of every other file
    documents.json       ids, texts and metadata
    corpus/*.npy         token and unit tables
    keys/L{l}_H{h}_{codes,scales}.npy
    clusters/L{l}_H{h}_{means,variance,spread,cluster_of}.npy
                         k-means clusters of those keys, for indexes past the clustered-search
                         threshold (see :mod:`s3_retriever.cluster_search`)
    postings/L{l}_H{h}_{indptr,byteptr,position_bytes,activation_codes}.npy
                         compact postings (see :mod:`s3_retriever.index`)
    sae/                 a copy of the SAE bundle the index was built with

A save is written to a sibling staging folder and swapped in with renames, so a crash at any
moment leaves either the old or the new complete index. It holds the folder's writer lock
(:mod:`s3_retriever.writer_lock`) and refuses to replace anything s3-retriever did not write
(:func:`s3_retriever.index_folder.check_save_target`). A load reads one generation of the folder
even while saves replace it (:mod:`s3_retriever.index_folder`).

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
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3_retriever.cluster_search import (
    CLUSTER_ARRAYS,
    KeyClusters,
    attach_clusters,
    key_clusters,
)
from s3_retriever.config import RetrieverConfig
from s3_retriever.corpus import Corpus
from s3_retriever.errors import IndexLoadError, S3RetrieverError, SaveTargetError
from s3_retriever.hashing import sha256_file
from s3_retriever.index import KeyStore, Postings
from s3_retriever.index_folder import check_save_target, pinned, plain_files, still_names
from s3_retriever.schema import Manifest, SchemaError, parse_manifest
from s3_retriever.untrusted import (
    UntrustedFileError,
    corpus_problem,
    documents_fit,
    npy_header,
    read_json_file,
)
from s3_retriever.writer_lock import writer_lock

if TYPE_CHECKING:
    from s3_retriever.models import LoadedModel
    from s3_retriever.retriever import S3Retriever

FORMAT_VERSION = 2
_READABLE_VERSIONS = (1, 2)
_POSTINGS_PARTS = (
    "indptr",
    "byteptr",
    "position_bytes",
    "activation_codes",
)
_CORPUS_ARRAYS = (
    "doc_token_start",
    "doc_token_count",
    "unit_doc",
    "unit_chars",
    "unit_tokens",
)


def _write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def index_key(path: str | os.PathLike[str]) -> Path:
    """The absolute path a save or load of ``path`` addresses (a link at the last part is kept,
    so that save can refuse it rather than write where it points)."""
    absolute = Path(os.path.abspath(path))
    return absolute.parent.resolve() / absolute.name


def save_index(retriever: S3Retriever, path: Path) -> None:
    """Write ``retriever``'s index to ``path`` atomically, holding the folder's writer lock.

    Raises:
        SaveTargetError: ``path`` is a file, a link, a folder of other files, or an index that
            another writer saved since this retriever read or wrote it.
    """
    path = index_key(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with writer_lock(path):
        check_save_target(path)
        _check_unchanged(retriever, path)
        staging = Path(
            tempfile.mkdtemp(prefix=f".{path.name}.saving-{os.getpid()}-", dir=path.parent)
        )
        try:
            _write_contents(retriever, staging)
            _fsync_tree(staging)
            digest = sha256_file(staging / "manifest.json")
            _swap_in(staging, path)
        except BaseException:
            shutil.rmtree(staging, ignore_errors=True)
            raise
        retriever.index_versions[str(path)] = digest
        _remove_stale_siblings(path)


def _check_unchanged(retriever: S3Retriever, path: Path) -> None:
    """Refuse to replace an index that changed since this retriever last read or wrote it: the
    other writer's documents would vanish (last writer wins)."""
    known = retriever.index_versions.get(str(path))
    if known is None or not has_index(path):
        return
    current = sha256_file(_resolve_existing(path) / "manifest.json")
    if current != known:
        raise SaveTargetError(
            f"{path} was saved by another writer since this retriever read or wrote it; saving "
            f"would drop that writer's documents. Load the index again, add your documents, "
            f"and save."
        )


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


def _write_contents(retriever: S3Retriever, folder: Path) -> None:
    corpus = retriever.corpus
    documents = {"ids": corpus.doc_ids, "texts": corpus.texts, "metadatas": corpus.metadatas}
    (folder / "documents.json").write_text(json.dumps(documents, ensure_ascii=False))
    for name in _CORPUS_ARRAYS:
        _write_npy(folder / "corpus" / f"{name}.npy", getattr(corpus, name))
    n_positions = corpus.n_positions
    threshold = retriever.config.scoring.cluster_search_above
    # Clusters are derived from the keys, but building them takes seconds per million tokens:
    # an index big enough to search through them keeps them, so its first query does not wait.
    with_clusters = threshold is not None and n_positions > threshold
    for (layer, kv), store in retriever.key_stores.items():
        store.flush(n_positions)
        _write_npy(folder / "keys" / f"L{layer}_H{kv}_codes.npy", store.codes)
        _write_npy(folder / "keys" / f"L{layer}_H{kv}_scales.npy", store.scales)
        if with_clusters:
            for name, array in key_clusters(store).arrays().items():
                _write_npy(folder / "clusters" / f"L{layer}_H{kv}_{name}.npy", array)
    for (layer, kv), postings in retriever.postings.items():
        postings.flush()
        for part in _POSTINGS_PARTS:
            _write_npy(folder / "postings" / f"L{layer}_H{kv}_{part}.npy", getattr(postings, part))
    retriever.bundle.save(folder / "sae")
    files = {
        str(p.relative_to(folder)): sha256_file(p) for p in sorted(folder.rglob("*")) if p.is_file()
    }
    manifest = {
        "format_version": FORMAT_VERSION,
        "model_id": retriever.loaded.model_id,
        "model_fingerprint": retriever.loaded.fingerprint,
        "dtype": str(next(retriever.loaded.model.parameters()).dtype).removeprefix("torch."),
        "tokenizer_fingerprint": retriever.loaded.tokenizer_fingerprint,
        "sae_checksum": retriever.bundle.checksum,
        "config": retriever.config.to_dict(),
        "heads": [list(h) for h in retriever.heads],
        "fields": [list(f) for f in retriever.fields],
        "n_documents": len(corpus),
        "n_positions": n_positions,
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
    config: RetrieverConfig
    manifest_digest: str
    """sha256 of manifest.json: which version of the index this is."""
    documents: Corpus | None = None
    arrays: dict[str, np.ndarray] = field(default_factory=dict)
    """Every .npy file by its name in the folder (``keys/L1_H0_codes.npy``)."""
    bundle: Any = None


def read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """Find the index folder (or a crash backup of it), read and verify its manifest and files."""
    stored = _read_consistent(Path(path), with_contents=False)
    return stored.folder, stored.raw_manifest


def read_index(path: Path) -> StoredIndex:
    """Every file of the index at ``path``, verified and read from one generation of it.

    A save that replaces the folder meanwhile makes this read the new generation, never a mix
    (:mod:`s3_retriever.index_folder`).
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
        manifest, config = parse_manifest(raw)
    except SchemaError as exc:
        state = "" if str(exc).startswith("holds invalid settings") else "is damaged: "
        raise IndexLoadError(f"{folder}/manifest.json {state}{exc}. Rebuild the index.") from exc
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
    stored = StoredIndex(folder, raw, manifest, config, sha256_file(root / "manifest.json"))
    if with_contents:
        from s3_retriever.sae import SAEBundle

        stored.bundle = SAEBundle.load(root / "sae")
        stored.documents = _read_documents(root)
        for name in sorted(files):
            if name.endswith(".npy"):
                # Keys, postings and cluster assignments are memory-mapped: the operating system
                # pages them in as searches touch them.
                stored.arrays[name] = _load_npy(root / name, mmap=not name.startswith("corpus/"))
    return stored


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    if not path.is_file():
        raise IndexLoadError(f"{path} is missing; the index is damaged. Rebuild the index.")
    try:
        # The header is checked against the file size before numpy allocates or maps anything.
        npy_header(path)
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError) as exc:
        raise IndexLoadError(f"{path} is not a plain numeric .npy array ({exc}); refused.") from exc
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise IndexLoadError(f"{path} does not hold a numeric array; refused.")
    return array


def _typed(stored: StoredIndex, name: str, kind: str, what: str) -> np.ndarray:
    """The stored array ``name``, refused unless its dtype is of numpy ``kind`` (e.g. "i")."""
    array = stored.arrays.get(name)
    if array is None:
        raise IndexLoadError(
            f"{stored.folder}/{name} is missing; the index is damaged. Rebuild the index."
        )
    if array.dtype.kind not in kind:
        raise IndexLoadError(
            f"{stored.folder}/{name} holds {array.dtype} values, expected {what}; the index is "
            f"damaged. Rebuild the index."
        )
    return array


def load_index(
    path: Path,
    model_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
    loaded: LoadedModel | None = None,
) -> S3Retriever:
    """Load an index; refuse it if the model, tokenizer or SAEs differ from those that built it.

    ``loaded`` reuses a model already in memory (checked like a freshly loaded one), so several
    indexes of one model (the shards of :mod:`s3_retriever.distributed`) share it.
    """
    from s3_retriever.models import DEFAULT_MODEL_NAME, load_model
    from s3_retriever.retriever import S3Retriever

    stored = read_index(path)
    manifest = stored.manifest
    if loaded is None and model_path is None and manifest.model_id != DEFAULT_MODEL_NAME:
        raise IndexLoadError(
            f"This index was built with {manifest.model_id!r}; pass model_path= to load it."
        )
    if loaded is None:
        # Question vectors must come from the same precision the keys were stored from.
        loaded = load_model(model_path, device=device, dtype=dtype or manifest.dtype)
    if loaded.fingerprint != manifest.model_fingerprint:
        raise IndexLoadError(
            f"Model mismatch: the index was built with {manifest.model_id!r} "
            f"(fingerprint {manifest.model_fingerprint[:12]}), but the model given is "
            f"{loaded.model_id!r} ({loaded.fingerprint[:12]}). Load it with the same model."
        )
    if loaded.tokenizer_fingerprint != manifest.tokenizer_fingerprint:
        raise IndexLoadError(
            "Tokenizer mismatch: the model's tokenizer differs from the one the index was built "
            "with, so token positions would not line up. Rebuild the index or use that tokenizer."
        )
    if stored.bundle.checksum != manifest.sae_checksum:
        raise IndexLoadError(
            "SAE mismatch: the SAE bundle in the index does not match the checksum it was built "
            "with. Rebuild the index."
        )
    retriever = S3Retriever(loaded, stored.bundle, stored.config)
    if [list(h) for h in retriever.heads] != [list(h) for h in manifest.heads]:
        raise IndexLoadError("The saved retrieval heads differ from those the config selects.")
    _fill(retriever, stored)
    retriever.index_versions[str(index_key(path))] = stored.manifest_digest
    return retriever


def _fill(retriever: S3Retriever, stored: StoredIndex) -> None:
    folder, manifest = stored.folder, stored.manifest
    corpus = stored.documents
    assert corpus is not None
    for name in _CORPUS_ARRAYS:
        setattr(corpus, name, _typed(stored, f"corpus/{name}.npy", "i", "signed integers"))
    if corpus.n_positions != manifest.n_positions or len(corpus) != manifest.n_documents:
        raise IndexLoadError(f"{folder}: document tables disagree with the manifest; rebuild.")
    problem = corpus_problem(corpus)
    if problem:
        raise IndexLoadError(f"{folder}: {problem}; the index is damaged. Rebuild the index.")
    retriever.corpus = corpus
    for (layer, kv), store in retriever.key_stores.items():
        stem = f"keys/L{layer}_H{kv}"
        store.codes = _typed(stored, f"{stem}_codes.npy", "i", "int8 codes")
        store.scales = _typed(stored, f"{stem}_scales.npy", "f", "float scales")
        if (
            store.codes.shape != (corpus.n_positions, store.head_dim)
            or store.scales.shape != (corpus.n_positions,)
            or store.codes.dtype != np.int8
        ):
            raise IndexLoadError(
                f"{folder}: stored keys have the wrong shape or type; rebuild the index."
            )
        _read_clusters(store, stored, f"clusters/L{layer}_H{kv}", corpus.n_positions)
    for (layer, kv), postings in retriever.postings.items():
        stem = f"postings/L{layer}_H{kv}"
        if manifest.format_version == 1:
            _read_v1_postings(postings, stored, stem)
        else:
            for part in _POSTINGS_PARTS:
                setattr(postings, part, _typed(stored, f"{stem}_{part}.npy", "iuf", "numbers"))
        problem = postings.check(corpus.n_positions)
        if problem:
            raise IndexLoadError(f"{folder}: {problem}; rebuild the index.")


def _read_clusters(store: KeyStore, stored: StoredIndex, stem: str, n_positions: int) -> None:
    """Attach saved key clusters, when the index has them (small indexes do not)."""
    if f"{stem}_means.npy" not in stored.arrays:
        return
    arrays = {
        name: _typed(stored, f"{stem}_{name}.npy", "iuf", "numbers") for name in CLUSTER_ARRAYS
    }
    try:
        attach_clusters(store, KeyClusters.from_arrays(arrays, n_positions, store.head_dim))
    except ValueError as exc:
        raise IndexLoadError(f"{stored.folder}: {exc}; rebuild the index.") from exc


def _read_v1_postings(postings: Postings, stored: StoredIndex, stem: str) -> None:
    """Format 1 kept int32 positions and float16 activations; encode them compactly."""
    indptr = _typed(stored, f"{stem}_indptr.npy", "iu", "integers")
    positions = _typed(stored, f"{stem}_positions.npy", "iu", "integers")
    activations = _typed(stored, f"{stem}_activations.npy", "f", "floats")
    lengths = np.diff(indptr)
    if (
        indptr.shape != (postings.n_latents + 1,)
        or len(positions) != len(activations)
        or (np.any(lengths < 0) or int(indptr[-1]) != len(positions))
    ):
        raise IndexLoadError(
            f"{stored.folder}/{stem}: format-1 postings are inconsistent; rebuild the index."
        )
    ids = np.repeat(np.arange(postings.n_latents), lengths)
    postings.append(positions.astype(np.int64), ids[:, None], activations[:, None])
    postings.flush()


def _read_documents(folder: Path) -> Corpus:
    path = folder / "documents.json"
    if not path.is_file():
        raise IndexLoadError(f"{path} is missing; the index is damaged. Rebuild the index.")
    try:
        documents = read_json_file(path, max_bytes=path.stat().st_size)
    except UntrustedFileError as exc:
        raise IndexLoadError(f"{exc}; the index is damaged. Rebuild the index.") from exc
    if not documents_fit(documents):
        raise IndexLoadError(
            f"{path} does not hold unique string ids, string texts and dict metadata of equal "
            f"count; the index is damaged. Rebuild the index."
        )
    return Corpus(
        doc_ids=list(documents["ids"]),
        texts=list(documents["texts"]),
        metadatas=list(documents["metadatas"]),
    )
