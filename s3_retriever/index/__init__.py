"""The index: documents, stored keys, postings, key clusters and BM25 (see :mod:`.index`)."""
