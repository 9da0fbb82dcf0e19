"""A small corpus and in-process shards for tests of sharded search (no Ray needed here).

:func:`sharded_corpus` makes documents with repeated sentences (so BM25 and RRF meet ties, which
must break as in one index), paragraphs and metadata to filter on. :func:`local_shards` splits
an :class:`S3Retriever`'s settings into in-process shards fed the way a build feeds them.
"""

from __future__ import annotations

import os
import random
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever.config import RetrieverConfig
from s3_retriever.distributed._ray import ensure_ray, require_ray
from s3_retriever.distributed.actors import Shards
from s3_retriever.distributed.layout import ShardedManifest, write_manifest, write_shard
from s3_retriever.distributed.retriever import ShardedRetriever
from s3_retriever.distributed.shard import ShardWorker
from s3_retriever.model.scan import ScanConfig
from s3_retriever.models import LoadedModel
from s3_retriever.retriever import S3Retriever
from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.search.spans import SpanConfig
from s3_retriever.testing import TRAINING_TEXT, tiny_config

EXACT_SCAN = ScanConfig(chunk_size=32, batch_size=1, show_progress=False)
"""One chunk per forward pass: a chunk's keys then do not depend on which other documents
shared its batch, so shards that scan their own documents store the very keys one index
stores (the tiny model's 32-token chunks, as :func:`s3_retriever.testing.tiny_config`)."""


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


def write_empty_sharded(template: S3Retriever, root: Path, num_shards: int) -> Path:
    """A complete sharded index of ``num_shards`` empty shards at ``root``, with the model, SAEs
    and settings of ``template`` (which is not changed)."""
    root.mkdir(parents=True, exist_ok=True)
    entries = [
        write_shard(
            root,
            i,
            S3Retriever(template.loaded, template.bundle, template.config),
            np.zeros(0, np.int64),
        )
        for i in range(num_shards)
    ]
    write_manifest(root, ShardedManifest(num_shards=num_shards, complete=True, shards=entries))
    return root


@contextmanager
def ray_sharded(
    loaded: LoadedModel,
    bundle: SAEBundle,
    root: Path,
    model_path: str | os.PathLike[str],
    *,
    config: RetrieverConfig | None = None,
    num_shards: int = 2,
    num_cpus: int = 2,
) -> Iterator[tuple[ShardedRetriever, S3Retriever]]:
    """An empty :class:`ShardedRetriever`, its shards Ray actors on a local cluster of
    ``num_cpus`` CPUs, and an empty :class:`S3Retriever` with the same model, SAEs and settings:
    given the same documents in the same order, both return the same hits.

    ``model_path`` is the folder of ``loaded``, which each shard actor loads; ``config`` is by
    default the tiny model's settings (:func:`s3_retriever.testing.tiny_config`) with
    :data:`EXACT_SCAN` and the default spans. Ray is started here and shut down after, unless it
    was already running; the actors are stopped after.
    """
    if config is None:
        config = tiny_config(scan=EXACT_SCAN, spans=SpanConfig())
    ray = require_ray()
    started = not ray.is_initialized()
    ensure_ray(None, num_cpus=num_cpus)
    try:
        write_empty_sharded(S3Retriever(loaded, bundle, config), root, num_shards)
        sharded = ShardedRetriever.load(
            root, model_path, dtype="float32", num_cpus_per_shard=num_cpus / (num_shards + 1)
        )
        try:
            yield sharded, S3Retriever(loaded, bundle, config)
        finally:
            sharded.close()
    finally:
        if started:
            ray.shutdown()
