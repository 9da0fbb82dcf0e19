"""Reading and writing one numeric array of a saved index: plain ``.npy``, never pickle.

Every store of :mod:`s3_retriever.index` saves and reads its own arrays through these two
functions, so the checks on a file the library reads back live in one place.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

import numpy as np

from s3_retriever.errors import IndexLoadError
from s3_retriever.files.untrusted import npy_header


def write_npy(path: Path, array: np.ndarray) -> None:
    """Write ``array`` to ``path`` (creating its folder), without pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.save(path, np.ascontiguousarray(array), allow_pickle=False)


def load_npy(path: Path, mmap: bool = False) -> np.ndarray:
    """A numeric array from ``path``; memory-mapped read-only with ``mmap``.

    Raises :class:`IndexLoadError` for a missing file or one that is not a plain numeric array.
    """
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


def typed(
    arrays: Mapping[str, np.ndarray], name: str, kind: str, what: str, folder: Path
) -> np.ndarray:
    """The stored array ``name``, refused unless its dtype is of numpy ``kind`` (e.g. "i")."""
    array = arrays.get(name)
    if array is None:
        raise IndexLoadError(
            f"{folder}/{name} is missing; the index is damaged. Rebuild the index."
        )
    if array.dtype.kind not in kind:
        raise IndexLoadError(
            f"{folder}/{name} holds {array.dtype} values, expected {what}; the index is "
            f"damaged. Rebuild the index."
        )
    return array
