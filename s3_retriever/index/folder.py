"""Reading one index folder as one consistent generation, and refusing unsafe save targets.

A save publishes a new index by renaming a complete folder into place
(:mod:`s3_retriever.index.storage`); no published folder is ever changed in place. A loader opens
the folder once and reads every file through that open directory (``/proc/self/fd/N`` on
Linux), so all it reads comes from one folder, one generation, even if a save renames another in
meanwhile. If that folder is deleted under it (a save removes the old generation), the read
fails; the loader then sees that the path now names another folder and reads that one instead of
reporting damage. An open directory keeps its inode number reserved, so "the path still names
the folder I hold" is an exact test: a failure while it holds is real damage.
"""

from __future__ import annotations

import json
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s3_retriever.errors import IndexLoadError, SaveTargetError

_PROC_FD = Path("/proc/self/fd")


def plain_files(root: Path, shown: Path) -> set[str]:
    """Relative names of every file below ``root``; refuses links and special files.

    A link (to a file or a folder) could reach outside the index folder, past every checksum, so
    an index folder may hold only plain files and folders.
    """
    found: set[str] = set()
    for here, dirs, files in os.walk(root, followlinks=False):
        for name in dirs + files:
            path = Path(here) / name
            rel = path.relative_to(root).as_posix()
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                raise IndexLoadError(
                    f"{shown}/{rel} is a symbolic link; an index folder holds only plain files "
                    f"(a link may point outside it, past the checksums); refused."
                )
            if not (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
                raise IndexLoadError(f"{shown}/{rel} is not a plain file; refused.")
            if stat.S_ISREG(mode):
                found.add(rel)
    return found


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except OSError:
        return None
    return info.st_dev, info.st_ino


@contextmanager
def pinned(folder: Path) -> Iterator[tuple[Path, tuple[int, int]]]:
    """Open ``folder``; yields a path that reads through the open folder, and its identity."""
    if not folder.is_dir():
        raise IndexLoadError(f"{folder} is not a folder; it holds no s3-retriever index.")
    handle = os.open(folder, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        info = os.fstat(handle)
        through = _PROC_FD / str(handle)
        # Without /proc (macOS), reads go by name; the loader then checks after reading that the
        # name still points to this folder, which the open descriptor keeps from being reused.
        root = through if through.is_dir() else folder
        yield root, (info.st_dev, info.st_ino)
    finally:
        os.close(handle)


def still_names(path: Path, identity: tuple[int, int]) -> bool:
    """Whether ``path`` names the folder of ``identity`` (held open by :func:`pinned`)."""
    return _identity(path) == identity


def is_index_folder(path: Path) -> bool:
    """Whether ``path`` holds a manifest s3-retriever wrote (format version and file list)."""
    try:
        manifest = json.loads((path / "manifest.json").read_bytes())
    except (OSError, ValueError, RecursionError):
        return False
    return (
        isinstance(manifest, dict)
        and isinstance(manifest.get("format_version"), int)
        and isinstance(manifest.get("files"), dict)
    )


def check_save_target(path: Path) -> None:
    """Refuse to save over anything s3-retriever did not write.

    ``path`` may be absent, an empty folder, or an index folder holding exactly the files its
    manifest lists. A file, a link, or a folder of anything else is refused: a save replaces the
    whole folder, so its contents would be lost.

    Raises:
        SaveTargetError: naming what is there and what to do.
    """
    if path.is_symlink():
        raise SaveTargetError(f"{path} is a symbolic link; save to a plain folder path.")
    if not path.exists():
        return
    if not path.is_dir():
        raise SaveTargetError(
            f"{path} is an existing file, not an index folder; saving would replace it. "
            f"Save to a new or empty folder."
        )
    contents = sorted(p.name for p in path.iterdir())
    if not contents:
        return
    if not is_index_folder(path):
        raise SaveTargetError(
            f"{path} is a folder that holds files but no s3-retriever index (e.g. "
            f"{contents[0]!r}); saving would replace them. Save to a new or empty folder."
        )
    listed = set(json.loads((path / "manifest.json").read_bytes())["files"]) | {"manifest.json"}
    try:
        present = plain_files(path, path)
    except IndexLoadError as exc:
        raise SaveTargetError(f"{exc} Saving would replace it; save elsewhere.") from None
    stray = sorted(present - listed)
    if stray:
        raise SaveTargetError(
            f"{path}/{stray[0]} is not part of the index there (its manifest does not list it); "
            f"saving would delete it. Move it out of the folder or save elsewhere."
        )
