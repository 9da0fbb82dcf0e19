"""Saving and loading an index as a versioned directory of .npy / JSON files, never pickle.

Layout::

    manifest.json        format version, model + tokenizer fingerprints, SAE checksum,
                         retriever config, heads, and the sha256 of every other file
    documents.json       ids, texts and metadata
    corpus/*.npy         token and unit tables
    keys/L{l}_H{h}_{codes,scales}.npy
    postings/L{l}_H{h}_{indptr,byteptr,position_bytes,activation_codes}.npy
                         compact postings (see :mod:`s3_retriever.index`)
    sae/                 a copy of the SAE bundle the index was built with

A save is written to a sibling staging folder and swapped in with renames, so a crash at any
moment leaves either the old or the new complete index.

Loading verifies every checksum, then memory-maps the large arrays (keys and postings): the
operating system pages them in as searches touch them, so a big index opens without a copy in
memory. Format 1 indexes (int32 positions, float16 activations) are read and re-encoded.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3_retriever.config import RetrieverConfig
from s3_retriever.corpus import Corpus
from s3_retriever.errors import IndexLoadError
from s3_retriever.index import Postings

if TYPE_CHECKING:
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


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _write_npy(path: Path, array: np.ndarray) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def _fsync_tree(folder: Path) -> None:
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


def save_index(retriever: S3Retriever, path: Path) -> None:
    """Write ``retriever``'s index to ``path`` atomically."""
    path = path.resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{path.name}.saving-", dir=path.parent))
    try:
        _write_contents(retriever, staging)
        _fsync_tree(staging)
        _swap_in(staging, path)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _write_contents(retriever: S3Retriever, folder: Path) -> None:
    corpus = retriever.corpus
    documents = {"ids": corpus.doc_ids, "texts": corpus.texts, "metadatas": corpus.metadatas}
    (folder / "documents.json").write_text(json.dumps(documents, ensure_ascii=False))
    for name in _CORPUS_ARRAYS:
        _write_npy(folder / "corpus" / f"{name}.npy", getattr(corpus, name))
    n_positions = corpus.n_positions
    for (layer, kv), store in retriever.key_stores.items():
        store.flush(n_positions)
        _write_npy(folder / "keys" / f"L{layer}_H{kv}_codes.npy", store.codes)
        _write_npy(folder / "keys" / f"L{layer}_H{kv}_scales.npy", store.scales)
    for (layer, kv), postings in retriever.postings.items():
        postings.flush()
        for part in _POSTINGS_PARTS:
            _write_npy(folder / "postings" / f"L{layer}_H{kv}_{part}.npy", getattr(postings, part))
    retriever.bundle.save(folder / "sae")
    files = {
        str(p.relative_to(folder)): _sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()
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
    backup = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.replace(path, backup)
    # A crash between these two renames leaves only the backup; load() falls back to it.
    os.replace(staging, path)
    shutil.rmtree(backup, ignore_errors=True)


def _resolve_existing(path: Path) -> Path:
    if (path / "manifest.json").is_file():
        return path
    backups = sorted(path.parent.glob(f".{path.name}.old-*"))
    for backup in backups:
        if (backup / "manifest.json").is_file():
            return backup
    raise IndexLoadError(
        f"{path} holds no s3-retriever index (manifest.json missing). Build one with "
        f"`s3-retriever index FILE... --out {path}`."
    )


def read_manifest(path: Path) -> tuple[Path, dict[str, Any]]:
    """Find the index folder (or a crash backup of it), read and verify its manifest and files."""
    folder = _resolve_existing(path)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise IndexLoadError(f"{folder}/manifest.json is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or manifest.get("format_version") not in _READABLE_VERSIONS:
        version = manifest.get("format_version") if isinstance(manifest, dict) else None
        raise IndexLoadError(
            f"{folder} is index format {version!r}; this s3-retriever reads formats "
            f"{', '.join(map(str, _READABLE_VERSIONS))}. Rebuild the index with this version."
        )
    files = manifest.get("files")
    if not isinstance(files, dict):
        raise IndexLoadError(f"{folder}/manifest.json lists no files; the index is damaged.")
    root = folder.resolve()
    for name, digest in files.items():
        target = (folder / name).resolve()
        if root not in target.parents:
            raise IndexLoadError(f"manifest entry {name!r} points outside {folder}; refused.")
        if not target.is_file():
            raise IndexLoadError(f"{folder} is damaged: {name} is missing. Rebuild the index.")
        if _sha256(target) != digest:
            raise IndexLoadError(
                f"{folder} is damaged: {name} does not match its checksum. Rebuild the index."
            )
    return folder, manifest


def _load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError) as exc:
        raise IndexLoadError(f"{path} is not a plain numeric .npy array ({exc}); refused.") from exc
    if not isinstance(array, np.ndarray) or array.dtype.hasobject:
        raise IndexLoadError(f"{path} does not hold a numeric array; refused.")
    return array


def load_index(
    path: Path,
    model_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> S3Retriever:
    """Load an index; refuse it if the model, tokenizer or SAEs differ from those that built it."""
    from s3_retriever.models import DEFAULT_MODEL_NAME, load_model
    from s3_retriever.retriever import S3Retriever
    from s3_retriever.sae import SAEBundle

    folder, manifest = read_manifest(path)
    if model_path is None and manifest["model_id"] != DEFAULT_MODEL_NAME:
        raise IndexLoadError(
            f"This index was built with {manifest['model_id']!r}; pass model_path= to load it."
        )
    # Question vectors must come from the same precision the keys were stored from.
    loaded = load_model(model_path, device=device, dtype=dtype or manifest.get("dtype", "auto"))
    if loaded.fingerprint != manifest["model_fingerprint"]:
        raise IndexLoadError(
            f"Model mismatch: the index was built with {manifest['model_id']!r} "
            f"(fingerprint {manifest['model_fingerprint'][:12]}), but the model given is "
            f"{loaded.model_id!r} ({loaded.fingerprint[:12]}). Load it with the same model."
        )
    if loaded.tokenizer_fingerprint != manifest["tokenizer_fingerprint"]:
        raise IndexLoadError(
            "Tokenizer mismatch: the model's tokenizer differs from the one the index was built "
            "with, so token positions would not line up. Rebuild the index or use that tokenizer."
        )
    bundle = SAEBundle.load(folder / "sae")
    if bundle.checksum != manifest["sae_checksum"]:
        raise IndexLoadError(
            "SAE mismatch: the SAE bundle in the index does not match the checksum it was built "
            "with. Rebuild the index."
        )
    config = RetrieverConfig.from_dict(manifest["config"])
    retriever = S3Retriever(loaded, bundle, config)
    if [list(h) for h in retriever.heads] != manifest["heads"]:
        raise IndexLoadError("The saved retrieval heads differ from those the config selects.")
    _fill(retriever, folder, manifest)
    return retriever


def _fill(retriever: S3Retriever, folder: Path, manifest: dict[str, Any]) -> None:
    documents = json.loads((folder / "documents.json").read_text())
    corpus = Corpus(
        doc_ids=list(documents["ids"]),
        texts=list(documents["texts"]),
        metadatas=list(documents["metadatas"]),
    )
    for name in _CORPUS_ARRAYS:
        setattr(corpus, name, _load_npy(folder / "corpus" / f"{name}.npy"))
    if corpus.n_positions != manifest["n_positions"] or len(corpus) != manifest["n_documents"]:
        raise IndexLoadError(f"{folder}: document tables disagree with the manifest; rebuild.")
    retriever.corpus = corpus
    for (layer, kv), store in retriever.key_stores.items():
        store.codes = _load_npy(folder / "keys" / f"L{layer}_H{kv}_codes.npy", mmap=True)
        store.scales = _load_npy(folder / "keys" / f"L{layer}_H{kv}_scales.npy", mmap=True)
        if store.codes.shape != (corpus.n_positions, store.head_dim):
            raise IndexLoadError(f"{folder}: stored keys have the wrong shape; rebuild the index.")
    version = manifest["format_version"]
    for (layer, kv), postings in retriever.postings.items():
        stem = folder / "postings" / f"L{layer}_H{kv}"
        if version == 1:
            _read_v1_postings(postings, stem)
        else:
            for part in _POSTINGS_PARTS:
                setattr(postings, part, _load_npy(Path(f"{stem}_{part}.npy"), mmap=True))
        problem = postings.check(corpus.n_positions)
        if problem:
            raise IndexLoadError(f"{folder}: {problem}; rebuild the index.")


def _read_v1_postings(postings: Postings, stem: Path) -> None:
    """Format 1 kept int32 positions and float16 activations; encode them compactly."""
    indptr = _load_npy(Path(f"{stem}_indptr.npy"))
    positions = _load_npy(Path(f"{stem}_positions.npy"))
    activations = _load_npy(Path(f"{stem}_activations.npy"))
    lengths = np.diff(indptr)
    if (
        indptr.shape != (postings.n_latents + 1,)
        or len(positions) != len(activations)
        or (np.any(lengths < 0) or int(indptr[-1]) != len(positions))
    ):
        raise IndexLoadError(f"{stem}: format-1 postings are inconsistent; rebuild the index.")
    ids = np.repeat(np.arange(postings.n_latents), lengths)
    postings.append(positions.astype(np.int64), ids[:, None], activations[:, None])
    postings.flush()
