"""Checks on files that may come from elsewhere: index manifests, .npy headers, SAE tensors.

Index and SAE folders are copied between machines, so their bytes are untrusted. Nothing here
executes what a file holds (no pickle), and every size a file declares is checked against the
file itself and against a ceiling *before* anything of that size is allocated.
"""

from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.errors import S3RetrieverError

MAX_MANIFEST_BYTES = 16 << 20
"""A manifest is a few kB; anything this large is not one, and is refused unread."""
MAX_ARRAY_BYTES = 1 << 40
"""Ceiling on one stored array (1 TiB), far above any real index and below what would exhaust
a machine's address space when a header lies."""
_DIGEST = re.compile(r"[0-9a-f]{64}")
_NUMERIC_KINDS = "biuf"
"""bool, signed and unsigned integers, floats: the only dtypes an index stores."""

MANIFEST_FIELDS: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "model_id": str,
    "model_fingerprint": str,
    "tokenizer_fingerprint": str,
    "sae_checksum": str,
    "config": dict,
    "heads": list,
    "n_documents": int,
    "n_positions": int,
    "files": dict,
}
"""Every manifest field that loading reads, with its JSON type."""


class UntrustedFileError(S3RetrieverError, ValueError):
    """A file's content is malformed or declares more than it holds; the message says which."""


def read_json_file(path: Path, max_bytes: int | None = None) -> Any:
    """Parse a JSON file of at most ``max_bytes`` (default :data:`MAX_MANIFEST_BYTES`), refusing
    larger ones before reading them."""
    max_bytes = MAX_MANIFEST_BYTES if max_bytes is None else max_bytes
    size = path.stat().st_size
    if size > max_bytes:
        raise UntrustedFileError(f"{path} is {size} bytes, more than the {max_bytes} allowed")
    try:
        return json.loads(path.read_bytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as exc:
        raise UntrustedFileError(f"{path} is not valid UTF-8 JSON: {exc}") from exc


def check_manifest_fields(manifest: dict[str, Any]) -> None:
    """Every field loading reads is present with the right type; the file list names safe paths.

    Raises:
        UntrustedFileError: naming the first missing or mistyped field or the bad file entry.
    """
    for name, kind in MANIFEST_FIELDS.items():
        value = manifest.get(name)
        # bool is an int in Python, but never a valid count or version here.
        if not isinstance(value, kind) or isinstance(value, bool):
            found = "missing" if name not in manifest else type(value).__name__
            expected = (
                kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            )
            raise UntrustedFileError(f"manifest field {name!r} is {found}, expected {expected}")
    for name, digest in manifest["files"].items():
        if not isinstance(digest, str) or not _DIGEST.fullmatch(digest):
            raise UntrustedFileError(f"manifest entry {name!r} has no sha256 digest")
        parts = name.split("/")
        if "\x00" in name or "\\" in name or os.path.isabs(name) or ".." in parts:
            raise UntrustedFileError(f"manifest entry {name!r} points outside the index folder")
        if any(part in ("", ".") for part in parts):
            raise UntrustedFileError(f"manifest entry {name!r} is not a plain relative path")


def npy_header(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> tuple[tuple[int, ...], np.dtype]:
    """Shape and dtype a .npy file declares, checked against the file's real size.

    Refuses object and structured dtypes (they would need pickle), Fortran order, and any header
    whose shape needs more bytes than the file holds or than ``max_bytes``: a crafted header
    cannot make the loader allocate what the file does not contain.
    """
    with open(path, "rb") as handle:
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version in ((2, 0), (3, 0)):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise UntrustedFileError(f"{path}: unknown .npy version {version}")
        except (ValueError, OSError, SyntaxError) as exc:
            raise UntrustedFileError(f"{path} has no valid .npy header ({exc})") from exc
        data_start = handle.tell()
    if dtype.hasobject or dtype.names is not None or dtype.kind not in _NUMERIC_KINDS:
        raise UntrustedFileError(f"{path} declares dtype {dtype}, not a plain numeric array")
    if fortran:
        raise UntrustedFileError(f"{path} is stored in Fortran order, which indexes never use")
    if any(dim < 0 for dim in shape):
        raise UntrustedFileError(f"{path} declares a negative dimension {shape}")
    declared = math.prod(shape) * dtype.itemsize
    held = path.stat().st_size - data_start
    if declared > max_bytes or declared != held:
        raise UntrustedFileError(
            f"{path} declares shape {shape} of {dtype} ({declared} bytes) but holds {held} bytes"
        )
    return tuple(int(d) for d in shape), dtype


def safetensors_shapes(path: Path, max_bytes: int = MAX_ARRAY_BYTES) -> dict[str, tuple[int, ...]]:
    """Tensor shapes a safetensors file declares, read from its header without loading tensors."""
    size = path.stat().st_size
    with open(path, "rb") as handle:
        prefix = handle.read(8)
        if len(prefix) < 8:
            raise UntrustedFileError(f"{path} is too short to be a safetensors file")
        header_len = int.from_bytes(prefix, "little")
        if header_len > min(size - 8, _MAX_SAFETENSORS_HEADER):
            raise UntrustedFileError(f"{path} declares a {header_len}-byte header it does not hold")
        try:
            header = json.loads(handle.read(header_len).decode("utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise UntrustedFileError(f"{path} has no valid safetensors header ({exc})") from exc
    if not isinstance(header, dict):
        raise UntrustedFileError(f"{path} has no valid safetensors header")
    data_bytes = size - 8 - header_len
    shapes: dict[str, tuple[int, ...]] = {}
    for name, entry in header.items():
        if name == "__metadata__":
            continue
        entry = entry if isinstance(entry, dict) else {}
        shape: Any = entry.get("shape")
        offsets: Any = entry.get("data_offsets")
        itemsize = _SAFETENSORS_ITEMSIZE.get(str(entry.get("dtype")))
        if itemsize is None or not _int_list(shape) or not _int_list(offsets, length=2):
            raise UntrustedFileError(
                f"{path}: tensor {name!r} has no valid dtype, shape or offsets"
            )
        declared = math.prod(shape) * itemsize
        if declared > max_bytes or offsets[1] - offsets[0] != declared or offsets[1] > data_bytes:
            raise UntrustedFileError(
                f"{path}: tensor {name!r} declares shape {shape} ({declared} bytes), which its "
                f"{data_bytes} bytes of data do not hold"
            )
        shapes[name] = tuple(shape)
    return shapes


_MAX_SAFETENSORS_HEADER = 100 << 20
"""The safetensors format's own ceiling on its JSON header."""
_SAFETENSORS_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I8": 1}
"""Dtypes an SAE bundle may hold, with their sizes in bytes."""


def _int_list(value: Any, length: int | None = None) -> bool:
    return (
        isinstance(value, list)
        and (length is None or len(value) == length)
        and all(isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in value)
    )


def documents_fit(documents: Any) -> bool:
    """documents.json holds unique string ids, string texts and dict metadata, equally many."""
    if not isinstance(documents, dict) or not all(
        isinstance(documents.get(key), list) for key in ("ids", "texts", "metadatas")
    ):
        return False
    ids, texts, metas = documents["ids"], documents["texts"], documents["metadatas"]
    return (
        len(ids) == len(texts) == len(metas)
        and all(isinstance(i, str) for i in ids)
        and len(set(ids)) == len(ids)
        and all(isinstance(t, str) for t in texts)
        and all(isinstance(m, dict) for m in metas)
    )
