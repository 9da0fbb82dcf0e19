"""Many threads retrieving while another adds documents: no exceptions, consistent results."""

from __future__ import annotations

import threading
from typing import Any

import pytest

from s3_retriever import Hit, S3Retriever
from s3_retriever.model.scan import tokenize
from s3_retriever.retriever import Mode
from s3_retriever.testing import TRAINING_TEXT
from tests.conftest import RetrieverFactory

QUESTIONS = ("When does the train leave?", "ocean temperature coral", "東京 首都", "budget vote")
MODES: tuple[Mode, ...] = ("hybrid", "s3", "bm25")
READERS = 6
QUERIES_PER_READER = 24


def _key(hits: list[Hit]) -> tuple[Any, ...]:
    """What must match exactly: spans and their scores rounded well above float noise."""
    return tuple((h.id, round(h.score, 4), h.text) for h in hits)


def _state_results(
    make_retriever: RetrieverFactory, base: list[str], added: list[str]
) -> list[dict[tuple[str, str], tuple[Any, ...]]]:
    """Expected results after 0, 1, ..., len(added) additions, computed sequentially."""
    reference = make_retriever()
    reference.add_documents(base, ids=[f"base-{i}" for i in range(len(base))])
    states = []
    for step in range(len(added) + 1):
        if step:
            reference.add_documents([added[step - 1]], ids=[f"new-{step - 1}"])
        states.append(
            {
                (q, m): _key(reference.retrieve(q, mode=m, token_budget=80))
                for q in QUESTIONS
                for m in MODES
            }
        )
    return states


def test_readers_see_consistent_states_while_a_writer_adds(
    make_retriever: RetrieverFactory,
) -> None:
    """Every result a reader gets equals the sequential result of some state the writer passed
    through, in order (a reader never goes back to an older state)."""
    base, added = TRAINING_TEXT[:5], TRAINING_TEXT[5:]
    expected = _state_results(make_retriever, base, added)
    live = make_retriever()
    live.add_documents(base, ids=[f"base-{i}" for i in range(len(base))])
    errors: list[BaseException] = []
    answered = [0] * READERS
    start = threading.Barrier(READERS + 1)

    def reader(slot: int) -> None:
        start.wait()
        oldest = 0  # the earliest state this reader may still observe
        try:
            for i in range(QUERIES_PER_READER):
                q, m = QUESTIONS[(i + slot) % len(QUESTIONS)], MODES[i % len(MODES)]
                got = _key(live.retrieve(q, mode=m, token_budget=80))
                matches = [
                    s
                    for s, results in enumerate(expected)
                    if s >= oldest and results[(q, m)] == got
                ]
                assert matches, f"result for {q!r}/{m} matches no state from {oldest} on"
                oldest = matches[0]
                answered[slot] += 1
        except BaseException as exc:  # noqa: BLE001 - reported below with its thread
            errors.append(exc)

    def writer() -> None:
        start.wait()
        try:
            for step, text in enumerate(added):
                live.add_documents([text], ids=[f"new-{step}"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=reader, args=(i,)) for i in range(READERS)]
    threads.append(threading.Thread(target=writer))
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(t.is_alive() for t in threads)
    assert not errors, errors[:3]
    assert live.doc_ids[-len(added) :] == [f"new-{i}" for i in range(len(added))]
    assert answered == [QUERIES_PER_READER] * READERS
    final = {
        (q, m): _key(live.retrieve(q, mode=m, token_budget=80)) for q in QUESTIONS for m in MODES
    }
    assert final == expected[-1]


def test_readers_and_deletes_and_saves_do_not_raise(
    make_retriever: RetrieverFactory, tmp_path: Any
) -> None:
    """Retrieve, add, delete and save from different threads at once: no exception, and the
    final index holds exactly what the writers left."""
    live = make_retriever()
    live.add_documents(TRAINING_TEXT[:4], ids=["a", "b", "c", "d"])
    errors: list[BaseException] = []

    def run(work: Any) -> None:
        try:
            work()
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    def read() -> None:
        for i in range(20):
            live.retrieve(QUESTIONS[i % 4], mode=MODES[i % 3], token_budget=60)

    def churn() -> None:
        for i in range(4):
            live.add_documents([TRAINING_TEXT[4 + i]], ids=[f"x{i}"])
            live.delete([f"x{i}"] if i % 2 else ["nothing"])

    def save() -> None:
        for i in range(3):
            live.save(tmp_path / f"index-{i}")

    threads = [threading.Thread(target=run, args=(w,)) for w in (read, read, read, churn, save)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    assert live.doc_ids == ["a", "b", "c", "d", "x0", "x2"]


def test_two_retrievers_sharing_one_model_in_threads(
    make_retriever: RetrieverFactory,
) -> None:
    """Forward hooks live on the shared model; before the fix, a second retriever's thread fired
    the first one's hooks (KeyError, or keys from the wrong text). Each must now get its own."""
    first, second = make_retriever(), make_retriever()
    first.add_documents(TRAINING_TEXT[:5], ids=[str(i) for i in range(5)])
    second.add_documents(TRAINING_TEXT[5:], ids=[str(i) for i in range(5)])
    expected = {
        id(r): {q: _key(r.retrieve(q, mode="s3")) for q in QUESTIONS} for r in (first, second)
    }
    errors: list[BaseException] = []
    wrong: list[str] = []

    def work(retriever: S3Retriever) -> None:
        try:
            for i in range(30):
                q = QUESTIONS[i % len(QUESTIONS)]
                if _key(retriever.retrieve(q, mode="s3")) != expected[id(retriever)][q]:
                    wrong.append(q)
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(r,)) for r in (first, second) * 2]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors, errors[:3]
    assert not wrong


@pytest.mark.parametrize("n_threads", [8])
def test_concurrent_adds_of_distinct_ids_all_land(
    make_retriever: RetrieverFactory, n_threads: int
) -> None:
    """Writers in parallel: every document is indexed once, none lost, ids unique."""
    live = make_retriever()
    errors: list[BaseException] = []

    def add(slot: int) -> None:
        try:
            live.add_documents([TRAINING_TEXT[slot % len(TRAINING_TEXT)]], ids=[f"w{slot}"])
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=add, args=(i,)) for i in range(n_threads)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not errors
    assert sorted(live.doc_ids) == sorted(f"w{i}" for i in range(n_threads))
    texts = [TRAINING_TEXT[i % len(TRAINING_TEXT)] for i in range(n_threads)]
    assert live.index.corpus.n_positions == sum(
        len(tokenize(live.model.tokenizer, t)) for t in texts
    )
