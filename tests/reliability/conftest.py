"""Reliability tests: bad input, crashes, concurrency, untrusted files, fuzzing.

Tests marked ``slow`` (the 2-million-token document, long crash and fuzz runs) are skipped unless
``-m slow`` selects them or ``S3_RETRIEVER_SLOW=1`` is set; smaller versions of the same checks
run every time.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from s3_retriever import S3Retriever
from tests.conftest import one_thread


def run_slow(config: pytest.Config) -> bool:
    """Whether slow tests were asked for, by marker expression or environment."""
    return "slow" in (config.getoption("-m") or "") or os.environ.get("S3_RETRIEVER_SLOW") == "1"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if run_slow(config):
        return
    skip = pytest.mark.skip(reason="slow: run with -m slow or S3_RETRIEVER_SLOW=1")
    for item in items:
        if "slow" in item.keywords:
            item.add_marker(skip)


@pytest.fixture(autouse=True)
def _one_torch_thread() -> Iterator[None]:
    """The tiny model is fastest on one intra-op thread; concurrency tests add Python threads."""
    with one_thread():
        yield


@pytest.fixture()
def saved(indexed: S3Retriever, tmp_path: Path) -> Path:
    """The shared four-document index saved to a fresh folder (tests may damage it)."""
    path = tmp_path / "index"
    indexed.save(path)
    return path
