"""The folder of a sharded index: one ordinary saved index per shard, and a manifest.

Layout::

    sharded.json            format, routing rule, number of shards, next document sequence
                            number, and per shard: documents, positions and checksum
    shard-00000/index/      an ordinary saved index (S3Retriever.load reads it as it is)
    shard-00000/order.npy   the sequence number of each of the shard's documents (int64)

A document's sequence number is its place in the order documents were given to the whole
index. Ranking ties break by it, as they break by position in one index, which is what makes a
sharded search return exactly what one index over the same documents returns.

A shard is written to a staging folder and swapped in with renames; the manifest is replaced
atomically after it (both with :mod:`s3_retriever.files.atomic`, as a single index is saved).
Its checksum covers the shard index's manifest (which holds the sha256 of every file of that
index) and ``order.npy``.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from s3_retriever.distributed.routing import ROUTING
from s3_retriever.errors import IndexLoadError
from s3_retriever.files.atomic import remove_stale_siblings, staged_folder, write_json_atomic
from s3_retriever.files.hashing import sha256_file

if TYPE_CHECKING:
    from s3_retriever.models import LoadedModel
    from s3_retriever.retriever import S3Retriever

MANIFEST = "sharded.json"
FORMAT = "s3-retriever-sharded"
FORMAT_VERSION = 1


@dataclass
class ShardEntry:
    """What the manifest records of one shard."""

    name: str
    n_documents: int = 0
    n_positions: int = 0
    checksum: str | None = None
    """``None`` until the shard is first written."""


@dataclass
class ShardedManifest:
    """The contents of ``sharded.json``."""

    num_shards: int
    next_seq: int = 0
    """Sequence number the next added document gets."""
    complete: bool = False
    """Whether the build that made the folder finished (every source document committed)."""
    shards: list[ShardEntry] = field(default_factory=list)
    routing: str = ROUTING

    def __post_init__(self) -> None:
        if not self.shards:
            self.shards = [ShardEntry(shard_name(i)) for i in range(self.num_shards)]


def shard_name(index: int) -> str:
    return f"shard-{index:05d}"


def is_sharded(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` holds a sharded index."""
    return (Path(path) / MANIFEST).is_file()


def check_output_folder(path: Path) -> None:
    """Refuse to build into a folder that holds something other than a sharded index."""
    if not path.exists() or is_sharded(path):
        return
    if not path.is_dir():
        raise ValueError(f"{path} is a file; give a folder for the sharded index")
    if (path / "manifest.json").is_file():
        raise ValueError(
            f"{path} holds a single (unsharded) index; give a new folder for the sharded one"
        )
    if any(path.iterdir()):
        raise ValueError(
            f"{path} is not empty and holds no sharded index; give a new or empty folder "
            f"(nothing there is overwritten or deleted)"
        )


def read_manifest(root: Path) -> ShardedManifest:
    """Read and check ``sharded.json``; errors say what is wrong and what to do."""
    path = root / MANIFEST
    if not path.is_file():
        raise IndexLoadError(
            f"{root} holds no sharded index ({MANIFEST} missing). Build one with "
            f"`s3-retriever index FILE... --out {root} --shards N`."
        )
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        if data.get("format") != FORMAT or data.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"not a {FORMAT} manifest of version {FORMAT_VERSION}")
        if data["routing"] != ROUTING:
            raise ValueError(f"routing {data['routing']!r} is not {ROUTING!r}")
        shards = [ShardEntry(**entry) for entry in data["shards"]]
        manifest = ShardedManifest(
            num_shards=int(data["num_shards"]),
            next_seq=int(data["next_seq"]),
            complete=bool(data["complete"]),
            shards=shards,
        )
        if len(shards) != manifest.num_shards:
            raise ValueError(f"{len(shards)} shard entries for {manifest.num_shards} shards")
        if [s.name for s in shards] != [shard_name(i) for i in range(len(shards))]:
            raise ValueError("shard names are not shard-00000, shard-00001, ...")
    except (ValueError, KeyError, TypeError, AttributeError) as exc:
        raise IndexLoadError(f"{path} is damaged ({exc}); rebuild the sharded index.") from exc
    return manifest


def write_manifest(root: Path, manifest: ShardedManifest) -> None:
    """Replace ``sharded.json`` atomically."""
    data: dict[str, Any] = {"format": FORMAT, "format_version": FORMAT_VERSION}
    data.update(asdict(manifest))
    root.mkdir(parents=True, exist_ok=True)
    write_json_atomic(root / MANIFEST, data)


def shard_checksum(folder: Path) -> str:
    """sha256 over the shard index's manifest (which lists every file's sha256) and order."""
    digest = hashlib.sha256()
    digest.update(sha256_file(folder / "index" / "manifest.json").encode())
    digest.update(sha256_file(folder / "order.npy").encode())
    return digest.hexdigest()


def write_shard(root: Path, index: int, retriever: S3Retriever, order: np.ndarray) -> ShardEntry:
    """Save one shard (its index and its documents' sequence numbers) atomically."""
    order = np.asarray(order, dtype=np.int64)
    if len(order) != len(retriever):
        raise ValueError(f"{len(order)} sequence numbers for {len(retriever)} documents")
    name = shard_name(index)
    final = root / name
    # A crash between the swap's renames leaves only the backup; shard_folder() falls back to it.
    with staged_folder(final) as staging:
        retriever.save(staging / "index")
        with open(staging / "order.npy", "wb") as out:
            np.save(out, order, allow_pickle=False)
            out.flush()
            os.fsync(out.fileno())
        checksum = shard_checksum(staging)
    remove_stale_siblings(final)
    return ShardEntry(name, len(retriever), retriever.index.n_positions, checksum)


def shard_folder(root: Path, index: int) -> Path | None:
    """The shard's folder, a backup a crashed swap left, or ``None`` if it was never written."""
    name = shard_name(index)
    if (root / name / "order.npy").is_file():
        return root / name
    backups = [b for b in root.glob(f".{name}.old-*") if (b / "order.npy").is_file()]
    if backups:
        return max(backups, key=lambda b: (b / "order.npy").stat().st_mtime_ns)
    return None


def load_shard(
    root: Path,
    index: int,
    entry: ShardEntry | None,
    loaded: LoadedModel | None = None,
    model_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> tuple[S3Retriever, np.ndarray]:
    """Load one shard and its sequence numbers; with ``entry``, check them against it."""
    from s3_retriever.retriever import S3Retriever

    folder = shard_folder(root, index)
    if folder is None:
        raise IndexLoadError(f"{root}: {shard_name(index)} is missing; rebuild or resume.")
    if entry is not None and entry.checksum != shard_checksum(folder):
        raise IndexLoadError(
            f"{folder} does not match its checksum in {MANIFEST}: it changed after the manifest "
            f"was written. Run the same `s3-retriever index ... --shards` command again to resume."
        )
    retriever = S3Retriever.load(
        folder / "index", model_path, device=device, dtype=dtype, loaded=loaded
    )
    order = np.load(folder / "order.npy", allow_pickle=False)
    if order.dtype != np.int64 or order.shape != (len(retriever),):
        raise IndexLoadError(f"{folder}/order.npy does not fit the shard's documents; rebuild.")
    return retriever, order
