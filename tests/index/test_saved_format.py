"""Indexes saved before the package was split into stages still load and answer the same.

``fixtures/format2`` is a format-2 index of three small documents over the tiny model (seed 0),
written by ``fixtures/make_format2_index.py`` with the code of commit 62495b2 (the last one with
the flat layout), with the hits that code gave for nine questions. It holds stored keys, postings
and saved key clusters.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from s3_retriever import S3Retriever
from s3_retriever.search.settings import MODES
from s3_retriever.testing import one_thread, save_tiny_model

FIXTURE = Path(__file__).parent / "fixtures" / "format2"


@pytest.fixture(scope="module")
def restored(tmp_path_factory: pytest.TempPathFactory) -> S3Retriever:
    work = tmp_path_factory.mktemp("format2")
    model_dir = save_tiny_model(work / "tiny-llama")
    index = shutil.copytree(FIXTURE / "index", work / "index")
    with one_thread():
        return S3Retriever.load(index, model_path=model_dir)


def test_old_index_loads_with_its_stores(restored: S3Retriever) -> None:
    manifest = json.loads((FIXTURE / "index" / "manifest.json").read_text())
    assert manifest["format_version"] == 2
    assert restored.doc_ids == ["rivers", "trains", "café"]
    assert len(restored.index) == 3
    assert restored.index.n_positions == manifest["n_positions"]
    assert set(restored.index.key_stores) == set(restored.index.postings) == {(1, 0), (2, 1)}
    for store in restored.index.key_stores.values():
        assert store.has_derived(("clusters", 16))  # read back, not rebuilt


def test_old_index_gives_the_hits_it_gave_when_saved(restored: S3Retriever) -> None:
    expected = json.loads((FIXTURE / "hits.json").read_text(encoding="utf-8"))
    got = {}
    with one_thread():
        for key in expected:
            mode, _, question = key.partition(":")
            assert mode in MODES
            got[key] = [
                [h.doc_id, h.start_char, h.end_char, round(h.score, 6)]
                for h in restored.retrieve(question, token_budget=48, mode=mode)  # type: ignore[arg-type]
            ]
    assert got == expected
