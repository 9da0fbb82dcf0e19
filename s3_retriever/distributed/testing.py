"""A small corpus and in-process shards for tests of sharded search (no Ray needed here).

:func:`sharded_corpus` makes documents with repeated sentences (so BM25 and RRF meet ties, which
must break as in one index), paragraphs and metadata to filter on. :func:`local_shards` splits
an :class:`S3Retriever`'s settings into in-process shards fed the way a build feeds them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import Any

from s3_retriever.distributed.actors import Shards
from s3_retriever.distributed.layout import ShardedManifest
from s3_retriever.distributed.retriever import ShardedRetriever
from s3_retriever.distributed.shard import ShardWorker
from s3_retriever.retriever import S3Retriever
from s3_retriever.testing import TRAINING_TEXT


def sharded_corpus(n_docs: int = 24, seed: int = 0) -> list[dict[str, Any]]:
    """``{id, text, metadata}`` rows: sentences drawn from the tiny model's training text."""
    rng = random.Random(seed)
    sentences = [s.strip() + "." for t in TRAINING_TEXT for s in t.split(".") if s.strip()]
    rows = []
    for i in range(n_docs):
        paragraphs = []
        for _ in range(rng.randint(1, 3)):
            paragraphs.append(" ".join(rng.choice(sentences) for _ in range(rng.randint(1, 4))))
        rows.append(
            {
                "id": f"doc-{i:03d}",
                "text": "\n\n".join(paragraphs),
                "metadata": {"group": ["a", "b", "c"][i % 3], "n": i},
            }
        )
    return rows


def local_sharded(
    template: S3Retriever, rows: Sequence[dict[str, Any]], num_shards: int
) -> ShardedRetriever:
    """A :class:`ShardedRetriever` over in-process shards holding ``rows`` (in that order)."""
    workers = [
        ShardWorker(S3Retriever(template.loaded, template.bundle, template.config), [], i)
        for i in range(num_shards)
    ]
    manifest = ShardedManifest(num_shards=num_shards, complete=True)
    sharded = ShardedRetriever(
        root=None,
        manifest=manifest,
        encoder=S3Retriever(template.loaded, template.bundle, template.config),
        shards=Shards(workers, None),
        doc_ids=[],
    )
    sharded.add_documents(
        [r["text"] for r in rows], [r["id"] for r in rows], [r["metadata"] for r in rows]
    )
    return sharded
