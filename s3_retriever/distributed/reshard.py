"""``reshard``: split a saved single index into a sharded one, without scanning again.

Every document goes to the shard its id hashes to (``routing.shard_of``, as
:func:`~s3_retriever.distributed.build_index` routes it); its sequence number is its row in the
single index, which is the order it was added in. A shard is the single index with every other
shard's documents deleted, so it holds the very keys and postings the single index holds, and the
sharded search returns what the single index returns. Shards are written atomically, then the
manifest, marked complete last.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import numpy as np

import s3_retriever.distributed.layout as layout
from s3_retriever.distributed.routing import shard_of
from s3_retriever.inputs import whole_number
from s3_retriever.retriever import S3Retriever


def reshard(
    index_dir: str | os.PathLike[str],
    out: str | os.PathLike[str],
    num_shards: int,
    *,
    model_path: str | os.PathLike[str] | None = None,
) -> list[int]:
    """Write the single index at ``index_dir`` as ``num_shards`` shards into ``out`` (a new or
    empty folder, or one an interrupted reshard left); returns the documents per shard."""
    num_shards = whole_number(num_shards, "num_shards")
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    source, root = Path(index_dir), Path(out)
    if layout.is_sharded(source):
        raise ValueError(f"{source} is already sharded; reshard takes a single saved index")
    layout.check_output_folder(root)
    if layout.is_sharded(root) and layout.read_manifest(root).complete:
        raise ValueError(f"{root} already holds a sharded index; give a new folder")
    first = S3Retriever.load(source, model_path)
    ids = first.doc_ids
    owner = np.asarray([shard_of(doc_id, num_shards) for doc_id in ids], np.int64)
    manifest = layout.ShardedManifest(num_shards=num_shards, next_seq=len(ids))
    root.mkdir(parents=True, exist_ok=True)
    layout.write_manifest(root, manifest)
    for shard in range(num_shards):
        retriever = first if shard == 0 else S3Retriever.load(source, loaded=first.model)
        # Shards read every key (their softmax normalisers add up), as build_index's do.
        scoring = dataclasses.replace(retriever.config.scoring, cluster_search_above=None)
        retriever.config = retriever.config.replace(scoring=scoring)
        retriever.delete([doc_id for doc_id, s in zip(ids, owner, strict=True) if s != shard])
        order = np.flatnonzero(owner == shard).astype(np.int64)
        manifest.shards[shard] = layout.write_shard(root, shard, retriever, order)
        layout.write_manifest(root, manifest)
    manifest.complete = True
    layout.write_manifest(root, manifest)
    return [entry.n_documents for entry in manifest.shards]
