"""Which shard owns a document: a stable hash of its id, the same in every process and run.

Python's ``hash`` of a str changes from one process to the next (hash randomisation), so it
cannot route documents that a later run must find again; 64 bits of BLAKE2b can.
"""

from __future__ import annotations

import hashlib

ROUTING = "blake2b-64"
"""Name of the routing rule, stored in a sharded folder's manifest."""


def shard_of(doc_id: str, num_shards: int) -> int:
    """Index of the shard that owns ``doc_id`` among ``num_shards``."""
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    digest = hashlib.blake2b(doc_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards
