"""How the driver reaches the shards: Ray actors (or plain objects in this process), and the
empty retriever that turns questions into vectors for all of them."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import s3_retriever.distributed.layout as layout
from s3_retriever.distributed.shard import ShardWorker
from s3_retriever.errors import IndexLoadError
from s3_retriever.retriever import S3Retriever


class ShardActor(ShardWorker):
    """A :class:`ShardWorker` that loads its shard itself (the body of a Ray actor)."""

    def __init__(
        self,
        root: str,
        index: int,
        entry: Mapping[str, Any] | None,
        model_path: str | None,
        device: str,
        dtype: str | None,
    ) -> None:
        opened = ShardWorker.open(root, index, entry, model_path, device, dtype)
        super().__init__(opened.retriever, opened.order, index)


class Shards:
    """Calls to every shard: Ray actors, or plain objects in this process (``ray`` None)."""

    def __init__(self, handles: Sequence[Any], ray: Any | None) -> None:
        self.handles = list(handles)
        self.ray = ray
        self.round_trips = 0
        """Calls the driver waited for (each to one or several shards at once)."""

    def __len__(self) -> int:
        return len(self.handles)

    def each(self, method: str, args: Mapping[int, tuple[Any, ...]]) -> dict[int, Any]:
        """Call ``method`` on the shards in ``args``, concurrently; results by shard."""
        self.round_trips += 1
        if self.ray is None:
            return {i: getattr(self.handles[i], method)(*a) for i, a in args.items()}
        refs = {i: getattr(self.handles[i], method).remote(*a) for i, a in args.items()}
        values = self.ray.get(list(refs.values()))
        return dict(zip(refs, values, strict=True))

    def tell(self, method: str, *args: Any) -> None:
        """Call ``method`` on every shard without waiting (an actor runs its calls in order)."""
        for handle in self.handles:
            if self.ray is None:
                getattr(handle, method)(*args)
            else:
                getattr(handle, method).remote(*args)

    def all(self, method: str, *args: Any) -> list[Any]:
        result = self.each(method, dict.fromkeys(range(len(self.handles)), args))
        return [result[i] for i in range(len(self.handles))]


def query_encoder(
    root: Path, model_path: str | None, device: str, dtype: str | None
) -> S3Retriever:
    """An empty retriever with the model, SAEs and settings of the index's first shard: it
    turns questions into vectors."""
    from s3_retriever.header import open_saved

    folder = layout.shard_folder(root, 0)
    if folder is None:
        raise IndexLoadError(f"{root}: {layout.shard_name(0)} is missing; rebuild the index.")
    stored, loaded, config = open_saved(
        folder / "index", model_path=model_path, device=device, dtype=dtype
    )
    assert stored.bundle is not None
    return S3Retriever(loaded, stored.bundle, config)
