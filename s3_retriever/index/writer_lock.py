"""One writer at a time per index folder: an exclusive ``flock`` on a file beside the folder.

The lock lives beside the index (``.NAME.lock``), not inside it, because a save replaces the
whole folder with renames (:mod:`s3_retriever.index.storage`): a lock file inside would be swapped
out with the old index. A second writer *waits* for the first's save to finish (saves take
seconds at most); it is then refused if the index changed since it read it
(:func:`s3_retriever.index.storage.save_index`), so no writer's documents vanish silently. The
lock is the kernel's: a killed writer releases it. The holder deletes the file before it lets
go, so no lock file stays beside an index; a waiter that then gets the lock of a deleted file
sees that the name no longer leads to it and takes the lock again.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from s3_retriever.errors import IndexBusyError

try:
    import fcntl
except ImportError:  # Windows: no flock; saves there are not locked
    fcntl = None  # type: ignore[assignment]

WAIT_SECONDS = 600.0
"""How long a writer waits for another's save before giving up with :class:`IndexBusyError`."""


def lock_path(index: Path) -> Path:
    """The lock file of the index folder ``index``."""
    return index.with_name(f".{index.name}.lock")


@contextmanager
def writer_lock(index: Path, wait_s: float | None = None) -> Iterator[None]:
    """Hold the exclusive writer lock of ``index`` for the block, waiting up to ``wait_s``.

    Raises:
        IndexBusyError: when another process still holds it after ``wait_s`` seconds.
    """
    wait_s = WAIT_SECONDS if wait_s is None else wait_s
    if fcntl is None:
        yield
        return
    name = lock_path(index)
    deadline = time.monotonic() + wait_s
    while True:
        handle = os.open(name, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(handle)
            if time.monotonic() >= deadline:
                raise IndexBusyError(
                    f"another process is saving {index} (it holds {name}) and did not finish "
                    f"within {wait_s:g} s; wait for it or save elsewhere"
                ) from None
            time.sleep(0.01)
            continue
        if _same_file(handle, name):
            break
        os.close(handle)  # the holder deleted it as we waited: lock the current one
    try:
        yield
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(name)
        os.close(handle)  # closing the descriptor releases the lock


def _same_file(handle: int, name: Path) -> bool:
    try:
        held, current = os.fstat(handle), os.stat(name)
    except FileNotFoundError:
        return False
    return (held.st_dev, held.st_ino) == (current.st_dev, current.st_ino)
