"""Checks on files that may come from elsewhere: index manifests, .npy headers, SAE tensors.

Index and SAE folders are copied between machines, so their bytes are untrusted. Nothing here
executes what a file holds (no pickle), and every size a file declares is checked against the
file itself and against a ceiling *before* anything of that size is allocated.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.errors import S3RetrieverError

MAX_MANIFEST_BYTES = 16 << 20
"""A manifest is a few kB; anything this large is not one, and is refused unread."""
MAX_ARRAY_BYTES = 1 << 40
"""Ceiling on one stored array (1 TiB), far above any real index and below what would exhaust
a machine's address space when a header lies."""
_NUMERIC_KINDS = "biuf"
"""bool, signed and unsigned integers, floats: the only dtypes an index stores."""


class UntrustedFileError(S3RetrieverError, ValueError):
    """A file's content is malformed or declares more than it holds; the message says which."""


class HugeInt(str):
    """An integer literal too long to be any count (see :func:`read_json_file`), kept as its
    digits so the schema can name the field that holds it."""


def _bounded_int(digits: str) -> int | HugeInt:
    # Python refuses to convert over 4,300 digits with a ValueError that names no field.
    return HugeInt(digits) if len(digits) > 30 else int(digits)


def read_json_file(path: Path, max_bytes: int | None = None, bounded_ints: bool = False) -> Any:
    """Parse a JSON file of at most ``max_bytes`` (default :data:`MAX_MANIFEST_BYTES`), refusing
    larger ones before reading them. With ``bounded_ints``, integers of over 30 digits are read
    as :class:`HugeInt` for the caller to refuse by field."""
    max_bytes = MAX_MANIFEST_BYTES if max_bytes is None else max_bytes
    size = path.stat().st_size
    if size > max_bytes:
        raise UntrustedFileError(f"{path} is {size} bytes, more than the {max_bytes} allowed")
    try:
        text = path.read_bytes().decode("utf-8")
        return json.loads(text, parse_int=_bounded_int) if bounded_ints else json.loads(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as exc:
        # ValueError also covers integers past Python's 4,300-digit conversion limit.
        raise UntrustedFileError(f"{path} is not valid UTF-8 JSON: {exc}") from exc


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
