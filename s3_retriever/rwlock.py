"""A readers-writer lock: queries run side by side, a commit runs alone.

``retrieve`` only reads the index, so any number of callers may hold :meth:`ReadWriteLock.read`
at once (numpy and torch release the GIL in their kernels, so two queries use two cores). An add
scans its documents without the lock and takes :meth:`ReadWriteLock.write` only to commit what it
scanned. A waiting writer stops new readers from entering, so a steady stream of queries cannot
starve a commit. Neither side is reentrant: a holder must not take the lock again.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator


class ReadWriteLock:
    """Shared (read) and exclusive (write) holds, writers first."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextlib.contextmanager
    def read(self) -> Iterator[None]:
        """Hold the lock shared with other readers."""
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextlib.contextmanager
    def write(self) -> Iterator[None]:
        """Hold the lock alone."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writing or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()
