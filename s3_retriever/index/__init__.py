"""The index: documents, stored keys, postings, key clusters and BM25, in one :class:`Index`.

:mod:`.corpus` (texts, units, token table), :mod:`.segment` (cutting documents into units),
:mod:`.key_encoding` (scanned keys to SAE codes), :mod:`.key_store` and :mod:`.postings` (the two
stores), :mod:`.clusters` (k-means of the stored keys), :mod:`.bm25` and :mod:`.storage` (the
versioned directory an index is saved to).
"""

from s3_retriever.index.bm25 import BM25Index, LexicalConfig
from s3_retriever.index.corpus import Corpus
from s3_retriever.index.index import Index
from s3_retriever.index.key_store import KeyStore
from s3_retriever.index.postings import Field, Postings
from s3_retriever.index.segment import SegmentConfig

__all__ = [
    "BM25Index",
    "Corpus",
    "Field",
    "Index",
    "KeyStore",
    "LexicalConfig",
    "Postings",
    "SegmentConfig",
]
