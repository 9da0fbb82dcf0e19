"""Per-unit tables the search caches on the corpus stay right across adds, deletes and loads."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from s3_retriever import S3Retriever
from s3_retriever.index.corpus import Corpus
from tests.conftest import RetrieverFactory


def _fresh(corpus: Corpus) -> Corpus:
    """The same documents and tables in a corpus with nothing cached."""
    return Corpus(
        doc_ids=list(corpus.doc_ids),
        texts=list(corpus.texts),
        metadatas=list(corpus.metadatas),
        doc_token_start=corpus.doc_token_start.copy(),
        doc_token_count=corpus.doc_token_count.copy(),
        unit_doc=corpus.unit_doc.copy(),
        unit_chars=corpus.unit_chars.copy(),
        unit_tokens=corpus.unit_tokens.copy(),
    )


def _check(corpus: Corpus) -> None:
    fresh = _fresh(corpus)
    assert np.array_equal(corpus.paragraph_breaks(), fresh.paragraph_breaks())
    assert np.array_equal(corpus.unit_token_counts(), fresh.unit_token_counts())
    for got, want in zip(corpus.nonempty_units(), fresh.nonempty_units(), strict=True):
        assert np.array_equal(got, want)
    for within in (True, False):
        for got, want in zip(corpus.unit_regions(within), fresh.unit_regions(within), strict=True):
            assert np.array_equal(got, want)


def test_cached_unit_tables_follow_adds_deletes_and_loads(
    make_retriever: RetrieverFactory, corpus: dict[str, str], tmp_path: Path
) -> None:
    retriever = make_retriever()
    ids = list(corpus)
    retriever.add_documents([corpus[i] for i in ids[:2]], ids=ids[:2])
    _check(retriever.index.corpus)
    retriever.add_documents([corpus[i] for i in ids[2:]], ids=ids[2:])
    _check(retriever.index.corpus)
    assert retriever.index.corpus.paragraph_breaks().any()
    retriever.delete([ids[1]])
    _check(retriever.index.corpus)
    retriever.add_documents(["First paragraph.\n\nSecond one.\nSame paragraph."], ids=["new"])
    _check(retriever.index.corpus)
    retriever.save(tmp_path / "index")
    _check(S3Retriever.load(tmp_path / "index", loaded=retriever.model).index.corpus)
