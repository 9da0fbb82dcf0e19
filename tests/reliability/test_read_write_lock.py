"""The readers-writer lock, and what it buys: queries overlap, an add's scan does not block."""

from __future__ import annotations

import threading
import time
from typing import Any

from s3_retriever.rwlock import ReadWriteLock
from s3_retriever.testing import TRAINING_TEXT
from tests.conftest import RetrieverFactory


def test_readers_share_and_a_writer_waits_for_them() -> None:
    lock = ReadWriteLock()
    inside = threading.Barrier(3, timeout=10)
    events: list[str] = []

    def reader() -> None:
        with lock.read():
            inside.wait()  # both readers are inside at once, or this times out
            time.sleep(0.05)
            events.append("read")

    def writer() -> None:
        inside.wait()
        with lock.write():
            events.append("write")

    threads = [threading.Thread(target=t) for t in (reader, reader, writer)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=20)
    assert events == ["read", "read", "write"]


def test_a_waiting_writer_goes_before_new_readers() -> None:
    lock = ReadWriteLock()
    events: list[str] = []
    first_in = threading.Event()

    def first_reader() -> None:
        with lock.read():
            first_in.set()
            time.sleep(0.2)
            events.append("first read")

    def writer() -> None:
        with lock.write():
            events.append("write")

    def late_reader() -> None:
        with lock.read():
            events.append("late read")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    first_in.wait(10)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    time.sleep(0.05)  # the writer is waiting now
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    for thread in threads:
        thread.join(timeout=20)
    assert events == ["first read", "write", "late read"]


def test_queries_answer_while_an_add_is_scanning(make_retriever: RetrieverFactory) -> None:
    """The add below is held inside its scan; a query from another thread still returns, and
    sees the index without the document being added."""
    live = make_retriever()
    live.add_documents(TRAINING_TEXT[:3], ids=["a", "b", "c"])
    scanning, release = threading.Event(), threading.Event()
    original = live._encoder.run

    def held_run(*args: Any) -> None:
        scanning.set()
        assert release.wait(30)
        original(*args)

    live._encoder.run = held_run  # type: ignore[method-assign,assignment]
    adder = threading.Thread(target=lambda: live.add_documents([TRAINING_TEXT[3]], ids=["d"]))
    adder.start()
    try:
        assert scanning.wait(30)
        hits = live.retrieve("ocean temperature coral", token_budget=60)
        assert {h.doc_id for h in hits} <= {"a", "b", "c"}
        assert live.doc_ids == ["a", "b", "c"]
    finally:
        release.set()
        adder.join(timeout=60)
    assert live.doc_ids == ["a", "b", "c", "d"]
