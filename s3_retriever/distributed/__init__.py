"""Sharded indexing and search on Ray (the ``ray`` extra: ``pip install "s3-retriever[ray]"``).

- :func:`build_index`: scan a corpus on a Ray Data actor pool into a folder of shards.
- :func:`reshard`: split a saved single index into shards, without scanning again.
- :class:`ShardedRetriever`: search it with one actor per shard; the results are exactly those
  of one :class:`~s3_retriever.S3Retriever` over the same documents (see :mod:`.merge`).

Ray is imported only when a cluster is needed, so this package imports without it; the core
library never imports it.
"""

from s3_retriever.distributed.build import BuildReport, build_index
from s3_retriever.distributed.layout import is_sharded
from s3_retriever.distributed.reshard import reshard
from s3_retriever.distributed.retriever import ShardedRetriever
from s3_retriever.distributed.routing import shard_of

__all__ = ["BuildReport", "ShardedRetriever", "build_index", "is_sharded", "reshard", "shard_of"]
