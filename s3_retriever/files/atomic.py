"""Writing files and folders so that a crash at any moment leaves the old version or the new one.

A file is written to a temporary sibling, flushed to disk and renamed over the old one
(:func:`write_json_atomic`). A folder is written to a staging sibling
``.{name}.saving-{pid}-{random}`` and swapped in with renames, the old folder moved aside to
``.{name}.old-{pid}-{random}`` first (:func:`staged_folder`); readers that find no folder fall
back to that backup (``s3_retriever/index/storage.py``, ``s3_retriever/distributed/layout.py``).

Only what these functions wrote is ever deleted: their own staging folder or temporary file
when a write fails, the backup of the folder they replaced, and (:func:`remove_stale_siblings`)
staging folders and backups that the same naming marks as theirs and whose process is gone.
Callers check first that the target is theirs to replace.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

_KINDS = ("saving", "old")
"""The two kinds of sibling :func:`staged_folder` leaves when its process is killed."""


def write_json_atomic(path: Path, data: Any, indent: int | None = 1) -> None:
    """Replace ``path`` by ``data`` as JSON (UTF-8), atomically and durably."""
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            json.dump(data, out, indent=indent)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def fsync_tree(folder: Path) -> None:
    """Flush every file under ``folder`` to disk (before a rename makes them visible)."""
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())


@contextmanager
def staged_folder(final: Path) -> Iterator[Path]:
    """A new staging folder beside ``final``; when the block ends without an error, it replaces
    ``final`` with renames only, else it is removed and ``final`` is left as it was.

    The block writes (and flushes) the folder's contents into the staging folder it is given.
    """
    final = Path(final)
    staging = Path(
        tempfile.mkdtemp(prefix=f".{final.name}.saving-{os.getpid()}-", dir=final.parent)
    )
    try:
        yield staging
        swap_in(staging, final)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def swap_in(staging: Path, final: Path) -> None:
    """Replace ``final`` by ``staging`` with renames only (a crash leaves one of them or the
    backup, which readers fall back to)."""
    if not final.exists():
        os.replace(staging, final)
        return
    # Unique even when a restarted process gets the pid of one that crashed here before.
    backup = final.with_name(f".{final.name}.old-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    os.replace(final, backup)
    # A crash between these two renames leaves only the backup.
    os.replace(staging, final)
    shutil.rmtree(backup, ignore_errors=True)


def remove_stale_siblings(final: Path) -> None:
    """Delete staging folders and backups that killed processes left beside ``final``.

    Only those whose process is gone are removed: a live one may be another writer mid-way.
    Call it once ``final`` is written: it is newer than any backup, so none is needed any more.
    """
    for sibling in final.parent.glob(f".{final.name}.*"):
        kind, _, rest = sibling.name[len(final.name) + 2 :].partition("-")
        pid = rest.split("-")[0]
        if kind in _KINDS and pid.isdigit() and not _process_alive(int(pid)):
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
