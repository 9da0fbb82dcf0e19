"""Index and SAE folders from elsewhere: nothing is executed, nothing oversized is allocated.

tests/index/test_storage.py already covers damaged bytes, missing files, path traversal, symlinks
and a pickled object array; these tests add crafted headers, unlisted files, malformed manifests
and tables, and the same for SAE bundles.
"""

from __future__ import annotations

import dataclasses
import json
import pickle
import shutil
import struct
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import s3_retriever.files.untrusted as untrusted
from s3_retriever import IndexLoadError, S3Retriever, SAEBundle, SAEError
from s3_retriever.files.untrusted import UntrustedFileError, npy_header, safetensors_shapes
from tests.index.test_storage import _refresh_checksum, _rewrite_manifest, _Trap


def _load(saved: Path, model_dir: Path) -> S3Retriever:
    return S3Retriever.load(saved, model_path=model_dir)


def _write_npy_header(path: Path, shape: tuple[int, ...], dtype: str, payload: bytes) -> None:
    with open(path, "wb") as handle:
        header = {"descr": np.dtype(dtype).str, "fortran_order": False, "shape": shape}
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(payload)


# ------------------------------------------------------------------------------- .npy headers


@pytest.mark.parametrize(
    ("shape", "match"),
    [((10**12,), "declares shape"), ((2**62, 2**62), "declares shape"), ((3,), "holds")],
)
def test_oversized_npy_header_is_refused_before_allocation(
    saved: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch, shape: Any, match: str
) -> None:
    """A header declaring more elements than the file holds is refused before np.load runs."""
    name = "corpus/unit_doc.npy"
    _write_npy_header(saved / name, shape, "<i8", b"\x00" * 16)
    _refresh_checksum(saved, name)
    loaded_paths: list[str] = []
    real_load = np.load
    monkeypatch.setattr(
        untrusted.np, "load", lambda p, **k: loaded_paths.append(str(p)) or real_load(p, **k)
    )
    with pytest.raises(IndexLoadError, match=match):
        _load(saved, model_dir)
    assert not any(p.endswith("unit_doc.npy") for p in loaded_paths)


@pytest.mark.parametrize(
    ("header", "match"),
    [
        ({"descr": "|O", "fortran_order": False, "shape": (2,)}, "not a plain numeric"),
        ({"descr": [("a", "<i8")], "fortran_order": False, "shape": (1,)}, "not a plain numeric"),
        ({"descr": "<U4", "fortran_order": False, "shape": (1,)}, "not a plain numeric"),
        ({"descr": "<i8", "fortran_order": True, "shape": (1, 2)}, "Fortran"),
    ],
)
def test_npy_header_kinds(tmp_path: Path, header: dict[str, Any], match: str) -> None:
    """Object, structured, string and Fortran-ordered arrays are refused from the header alone."""
    path = tmp_path / "x.npy"
    with open(path, "wb") as handle:
        np.lib.format.write_array_header_1_0(handle, header)
        handle.write(b"\x00" * 16)
    with pytest.raises(UntrustedFileError, match=match):
        npy_header(path)


@pytest.mark.parametrize(
    "content", [b"", b"\x93NUMPY", b"not an npy file at all", b"\x93NUMPY\x09"]
)
def test_truncated_or_foreign_npy_is_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.npy"
    path.write_bytes(content)
    with pytest.raises(UntrustedFileError):
        npy_header(path)


def test_raw_pickle_in_place_of_an_array_is_never_run(
    saved: Path, model_dir: Path, tmp_path: Path
) -> None:
    """A plain pickle file (no .npy header) under an array's name, checksum updated: refused,
    and its payload does not run."""
    marker = tmp_path / "ran"
    name = "postings/L1_H0_position_bytes.npy"
    (saved / name).write_bytes(pickle.dumps(_Trap(marker)))
    _refresh_checksum(saved, name)
    with pytest.raises(IndexLoadError, match=r"L1_H0_position_bytes\.npy"):
        _load(saved, model_dir)
    assert not marker.exists()


# ------------------------------------------------------------------------------- manifest


def test_unlisted_file_is_refused(saved: Path, model_dir: Path) -> None:
    """Every file in the folder must be verifiable: one missing from the manifest is refused,
    so a manifest that lists nothing cannot switch verification off."""
    _rewrite_manifest(saved, lambda m: m["files"].pop("corpus/unit_chars.npy"))
    with pytest.raises(IndexLoadError, match=r"corpus/unit_chars\.npy is not listed"):
        _load(saved, model_dir)
    _rewrite_manifest(saved, lambda m: m.__setitem__("files", {}))
    with pytest.raises(IndexLoadError, match="not listed"):
        _load(saved, model_dir)


def test_stray_pickle_file_is_refused(saved: Path, model_dir: Path, tmp_path: Path) -> None:
    """A file dropped into the folder (here a pickle) is refused as unlisted, never opened."""
    marker = tmp_path / "ran"
    (saved / "keys" / "extra.pkl").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(IndexLoadError, match=r"keys/extra\.pkl is not listed"):
        _load(saved, model_dir)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda m: m.pop("model_fingerprint"), "'model_fingerprint' is missing"),
        (lambda m: m.__setitem__("n_positions", "12"), "'n_positions' is str"),
        (lambda m: m.__setitem__("n_documents", True), "'n_documents' is bool"),
        (lambda m: m.__setitem__("config", []), "'config' is list"),
        (lambda m: m["files"].__setitem__("documents.json", "abc"), "no sha256"),
        (lambda m: m["files"].__setitem__("a\x00b", "0" * 64), "outside"),
        (lambda m: m["files"].__setitem__("keys\\..\\..\\x", "0" * 64), "outside"),
        (lambda m: m["files"].__setitem__("./documents.json", "0" * 64), "plain relative"),
        (lambda m: m["files"].__setitem__("keys//x", "0" * 64), "plain relative"),
        (lambda m: m["config"]["scan"].__setitem__("chunk_size", "big"), "invalid settings"),
        (lambda m: m["config"].__setitem__("evil", 1), "invalid settings"),
    ],
)
def test_malformed_manifest_fields_are_named(
    saved: Path, model_dir: Path, change: Any, match: str
) -> None:
    """A manifest with a missing or mistyped field raises IndexLoadError naming the field."""
    _rewrite_manifest(saved, change)
    with pytest.raises(IndexLoadError, match=match):
        _load(saved, model_dir)


def test_huge_manifest_is_refused_unread(
    saved: Path, model_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A manifest larger than the ceiling is refused from its size alone."""
    monkeypatch.setattr(untrusted, "MAX_MANIFEST_BYTES", 64)
    with pytest.raises(IndexLoadError, match="more than the 64 allowed"):
        _load(saved, model_dir)


# ------------------------------------------------------------------------------- tables


@pytest.mark.parametrize(
    ("name", "change", "match"),
    [
        ("documents.json", lambda d: d["ids"].__setitem__(1, d["ids"][0]), "unique string ids"),
        ("documents.json", lambda d: d["texts"].__setitem__(0, 5), "string texts"),
        ("documents.json", lambda d: d.pop("metadatas"), "dict metadata"),
        ("corpus/unit_chars.npy", lambda a: a + 10**6, "character offsets"),
        ("corpus/unit_tokens.npy", lambda a: a - 10**6, "token ranges"),
        ("corpus/unit_doc.npy", lambda a: a + 100, "documents that do not exist"),
        ("corpus/doc_token_start.npy", lambda a: a + 1, "not contiguous"),
        ("postings/L1_H0_position_bytes.npy", lambda a: a | 0x80, "one value per posting"),
        ("postings/L1_H0_indptr.npy", lambda a: a[::-1].copy(), "not monotonic"),
        ("keys/L1_H0_scales.npy", lambda a: a[:-1].copy(), "wrong shape"),
    ],
)
def test_inconsistent_tables_with_valid_checksums_are_refused(
    saved: Path, model_dir: Path, name: str, change: Any, match: str
) -> None:
    """Tables that pass their checksums but would index out of range are refused by name."""
    path = saved / name
    if name.endswith(".json"):
        data = json.loads(path.read_text())
        change(data)
        path.write_text(json.dumps(data))
    else:
        np.save(path, change(np.load(path)), allow_pickle=False)
    _refresh_checksum(saved, name)
    with pytest.raises(IndexLoadError, match=match):
        _load(saved, model_dir)


# ------------------------------------------------------------------------------- SAE bundles


@pytest.fixture()
def sae_copy(bundle_dir: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(bundle_dir, tmp_path / "sae"))


def _safetensors(path: Path, header: dict[str, Any], data: bytes) -> None:
    encoded = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(encoded)) + encoded + data)


def test_sae_config_declaring_huge_dictionary_is_refused_before_allocation(
    sae_copy: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """n_latents = 10^11 in config.json used to allocate 6.4 TB (RuntimeError) before checking
    the file; now the file's header is compared first and no SAE module is built."""
    config = json.loads((sae_copy / "config.json").read_text())
    config["layers"]["1"]["n_latents"] = 10**11
    (sae_copy / "config.json").write_text(json.dumps(config))
    built_modules: list[Any] = []
    monkeypatch.setattr(
        "s3_retriever.sae.bundle.TopKSAE.__init__", lambda *a: built_modules.append(a)
    )
    with pytest.raises(SAEError, match="has tensors"):
        SAEBundle.load(sae_copy)
    assert not built_modules


def test_safetensors_header_larger_than_its_data_is_refused(sae_copy: Path) -> None:
    """A tensor header claiming 10^9 x 16 floats over 64 bytes of data is refused unread."""
    header = {"W_enc": {"dtype": "F32", "shape": [10**9, 16], "data_offsets": [0, 64]}}
    _safetensors(sae_copy / "layer_01.safetensors", header, b"\x00" * 64)
    with pytest.raises(SAEError, match="do not hold"):
        SAEBundle.load(sae_copy)


@pytest.mark.parametrize(
    "content",
    [
        b"",
        b"\xff" * 8,
        struct.pack("<Q", 4) + b"[1]!",
        struct.pack("<Q", 2) + b"{}",
    ],
)
def test_malformed_safetensors_are_refused(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "x.safetensors"
    path.write_bytes(content)
    try:
        shapes = safetensors_shapes(path)
    except UntrustedFileError:
        return
    assert shapes == {}  # an empty header is well formed, and then declares nothing


def test_pickle_in_place_of_sae_weights_is_never_run(sae_copy: Path, tmp_path: Path) -> None:
    """SAE weights are read as safetensors only: a pickle under that name is refused, unrun."""
    marker = tmp_path / "ran"
    (sae_copy / "layer_02.safetensors").write_bytes(pickle.dumps(_Trap(marker)))
    with pytest.raises(SAEError, match="layer_02"):
        SAEBundle.load(sae_copy)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("change", "match"),
    [
        (lambda c: c.pop("layers"), "malformed"),
        (lambda c: c["layers"].__setitem__("x", {"d_in": 16}), "malformed"),
        (lambda c: c["layers"]["1"].__setitem__("evil", 1), "malformed"),
        (lambda c: c.__setitem__("retrieval_heads", [["a", 1]]), "malformed"),
    ],
)
def test_malformed_sae_config_is_refused(sae_copy: Path, change: Any, match: str) -> None:
    """A config.json of the right format but wrong content raises SAEError, not a KeyError."""
    config = json.loads((sae_copy / "config.json").read_text())
    change(config)
    (sae_copy / "config.json").write_text(json.dumps(config))
    with pytest.raises(SAEError, match=match):
        SAEBundle.load(sae_copy)


def test_postings_gaps_beyond_the_corpus_fail_clearly_at_first_use(
    saved: Path, model_dir: Path
) -> None:
    """Gaps are checksummed, not decoded, at load; a crafted gap is refused before any search."""
    name = "postings/L1_H0_position_bytes.npy"
    data = np.load(saved / name)
    last_value_end = np.flatnonzero((data & 0x80) == 0)[-1]
    # Two continuation bytes before the final value's last byte make that gap at least 2**14,
    # far beyond the few hundred tokens the fixture indexes.
    crafted = np.insert(data, last_value_end, [0xFF, 0xFF]).astype(np.uint8)
    byteptr_name = "postings/L1_H0_byteptr.npy"
    byteptr = np.load(saved / byteptr_name)
    byteptr[byteptr > last_value_end] += 2
    np.save(saved / name, crafted, allow_pickle=False)
    np.save(saved / byteptr_name, byteptr, allow_pickle=False)
    _refresh_checksum(saved, name)
    _refresh_checksum(saved, byteptr_name)
    retriever = _load(saved, model_dir)
    retriever.config = retriever.config.replace(
        scoring=dataclasses.replace(retriever.config.scoring, scorer="aligned")
    )
    with pytest.raises(IndexLoadError, match="outside the indexed tokens"):
        retriever.retrieve("anything at all", token_budget=64, mode="s3")
