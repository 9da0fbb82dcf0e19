"""Independent pieces of a commit, run on several cores.

Each field's store (its key store, its postings) is built from that field's scanned chunks alone,
and the work is numpy sorts, gathers and arithmetic over millions of elements, which run without
the GIL: on a GPU machine with many cores, the commit of a long call takes about as long as its
largest field instead of the sum of all of them (docs/performance.md, the user's GPU path).
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

# Each running field holds its own transient arrays (about 30 bytes a posting while it sorts),
# so the threads are capped to keep the peak of a long commit bounded.
_MAX_THREADS = 8


def run_in_threads(tasks: Sequence[Callable[[], None]]) -> None:
    """Run ``tasks`` (which share no data) on up to ``_MAX_THREADS`` threads; the first
    exception raised by any of them is raised here, after all have finished."""
    workers = min(len(tasks), os.cpu_count() or 1, _MAX_THREADS)
    if workers <= 1:
        for task in tasks:
            task()
        return
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="s3-commit") as pool:
        futures = [pool.submit(task) for task in tasks]
    for future in futures:
        future.result()
