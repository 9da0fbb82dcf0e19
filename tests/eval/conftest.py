"""Fixtures for the evaluation tests: the shared evaluation data, where present."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from s3_retriever.eval.data import DATA_DIR_ENV


def _shared_data_dir() -> Path | None:
    override = os.environ.get(DATA_DIR_ENV)
    path = (
        Path(override)
        if override
        else Path(__file__).resolve().parents[2].parent / "shared" / "data"
    )
    return path if path.is_dir() else None


@pytest.fixture
def shared_data() -> Path:
    path = _shared_data_dir()
    if path is None:
        pytest.skip("shared evaluation data (../shared/data or $S3_EVAL_DATA) is not present")
    return path
