"""Open a saved index folder, single or sharded, behind one ``retrieve``."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def open_index(path: Path, model: str | None, ray_address: str | None) -> Any:
    """An :class:`~s3_retriever.S3Retriever`, or a ShardedRetriever (shards on Ray actors)."""
    from s3_retriever.distributed.layout import is_sharded

    if is_sharded(path):
        from s3_retriever.distributed.retriever import ShardedRetriever

        return ShardedRetriever.load(path, model_path=model, ray_address=ray_address)
    from s3_retriever.retriever import S3Retriever

    return S3Retriever.load(path, model_path=model)
