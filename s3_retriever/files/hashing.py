"""Streamed sha256 of files: model weights, GGUF parts and index files are hundreds of MB."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from pathlib import Path

__all__ = ["sha256_file", "sha256_files"]


def sha256_files(paths: Iterable[Path], chunk_bytes: int = 1 << 22) -> str:
    """sha256 of the files' bytes read one after another (a file shipped in parts, joined)."""
    digest = hashlib.sha256()
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(chunk_bytes):
                digest.update(block)
    return digest.hexdigest()


def sha256_file(path: Path, chunk_bytes: int = 1 << 22) -> str:
    """sha256 of one file, read in chunks."""
    return sha256_files([path], chunk_bytes)
