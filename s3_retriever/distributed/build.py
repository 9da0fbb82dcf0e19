"""``build_index``: scan a corpus on a Ray Data actor pool and write it as a sharded index.

Documents (paths, JSONL, or a Ray Dataset of ``{id, text, metadata}`` rows) get a sequence
number in the order given and a shard by a stable hash of their id
(:func:`s3_retriever.distributed.routing.shard_of`). Ray Data's ``map_batches`` runs the scan
over a pool of actors, each holding one copy of the model (one GPU each when the cluster has
GPUs); the driver commits each scanned document to its shard, in sequence order, and saves a
shard every ``commit_every`` of its documents (atomically, see
:mod:`s3_retriever.distributed.layout`).

Resuming: a killed scan actor is restarted by Ray and its batch run again; a killed driver is
resumed by running the same build again: documents already committed to a shard are skipped,
the rest are scanned, so no document is lost or indexed twice.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

import s3_retriever.distributed.layout as layout
from s3_retriever.bulk import SourceDocument, SourceError, iter_documents
from s3_retriever.config import RetrieverConfig
from s3_retriever.distributed._ray import ensure_ray
from s3_retriever.distributed.routing import shard_of
from s3_retriever.retriever import S3Retriever, ScannedTexts


@dataclass
class BuildReport:
    """What one :func:`build_index` run did."""

    added: int = 0
    """Documents scanned and committed by this run."""
    skipped: int = 0
    """Documents already committed by an earlier, interrupted run."""
    tokens: int = 0
    """Model tokens scanned by this run."""
    commits: int = 0
    """Shard saves."""
    shards: list[int] = dataclasses.field(default_factory=list)
    """Documents per shard at the end."""


class ScanActor:
    """Ray Data actor: one model; turns a batch of texts into scanned documents."""

    def __init__(self, spec: dict[str, Any]) -> None:
        self.retriever = _open_retriever(spec)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        texts = [str(t) for t in batch["text"]]
        scanned = self.retriever.scan_texts(texts)
        payloads = [pickle.dumps(part) for part in split_scanned(scanned)]
        return {"seq": np.asarray(batch["seq"]), "payload": np.array(payloads, dtype=object)}


def _open_retriever(spec: dict[str, Any]) -> S3Retriever:
    config = None
    if spec["config"] is not None:
        config = RetrieverConfig.from_dict(spec["config"])
    elif spec["compact"]:
        config = RetrieverConfig.compact()
    config = config or RetrieverConfig()
    config = config.replace(
        scan=dataclasses.replace(config.scan, show_progress=False),
        scoring=dataclasses.replace(config.scoring, cluster_search_above=None),
    )
    return S3Retriever.from_pretrained(
        spec["model_path"],
        spec["sae_path"],
        config,
        device=spec["device"],
        dtype=spec["dtype"],
        compact=spec["compact"],
    )


def split_scanned(scanned: ScannedTexts) -> list[ScannedTexts]:
    """One :class:`ScannedTexts` per text, positions counted from that text's start."""
    lengths = np.asarray([len(t) for t in scanned.tokenized], np.int64)
    bases = np.concatenate([[0], np.cumsum(lengths)[:-1]]).astype(np.int64)
    parts = [
        ScannedTexts(
            [text], [tokens], {f: [] for f in scanned.keys}, {f: [] for f in scanned.codes}
        )
        for text, tokens in zip(scanned.texts, scanned.tokenized, strict=True)
    ]
    for f, chunks in scanned.keys.items():
        for positions, vectors in chunks:
            doc = int(np.searchsorted(bases, positions[0], side="right") - 1)
            parts[doc].keys[f].append((positions - bases[doc], vectors))
    for f, code_chunks in scanned.codes.items():
        for positions, ids, acts in code_chunks:
            doc = int(np.searchsorted(bases, positions[0], side="right") - 1)
            parts[doc].codes[f].append((positions - bases[doc], ids, acts))
    return parts


def join_scanned(parts: Sequence[ScannedTexts]) -> ScannedTexts:
    """The inverse of :func:`split_scanned`: texts one after another."""
    joined = ScannedTexts([], [], {f: [] for f in parts[0].keys}, {f: [] for f in parts[0].codes})
    base = 0
    for part in parts:
        joined.texts.extend(part.texts)
        joined.tokenized.extend(part.tokenized)
        for f, chunks in part.keys.items():
            joined.keys[f].extend((p + base, v) for p, v in chunks)
        for f, code_chunks in part.codes.items():
            joined.codes[f].extend((p + base, i, a) for p, i, a in code_chunks)
        base += sum(len(t) for t in part.tokenized)
    return joined


def _source_documents(source: Any) -> Iterator[SourceDocument]:
    """Documents of paths/JSONL files, of ``{id, text, metadata}`` rows, or of a Ray Dataset
    (read in its order)."""
    if isinstance(source, (str, os.PathLike)):
        source = [source]
    if hasattr(source, "iter_rows") and hasattr(source, "map_batches"):
        source = source.iter_rows()
    elif all(isinstance(item, (str, os.PathLike)) for item in source):
        yield from iter_documents(list(source))
        return
    for row in source:
        if isinstance(row, SourceDocument):
            yield row
            continue
        if not isinstance(row, dict) or not isinstance(row.get("text"), str) or "id" not in row:
            raise SourceError(
                "each source row must be a mapping with an 'id' and a 'text' string (and an "
                "optional 'metadata' mapping)"
            )
        yield SourceDocument(str(row["id"]), row["text"], dict(row.get("metadata") or {}))


def build_index(
    source: str | os.PathLike[str] | Sequence[str | os.PathLike[str]] | Any,
    out: str | os.PathLike[str],
    num_shards: int,
    *,
    model_path: str | os.PathLike[str] | None = None,
    sae_path: str | os.PathLike[str] | None = None,
    config: RetrieverConfig | None = None,
    compact: bool = False,
    dtype: str = "auto",
    ray_address: str | None = None,
    num_actors: int = 1,
    cpus_per_actor: float = 1.0,
    batch_size: int = 8,
    commit_every: int = 200,
    progress: bool = True,
    on_commit: Callable[[BuildReport], None] | None = None,
) -> BuildReport:
    """Scan ``source`` on Ray and write a sharded index of ``num_shards`` shards to ``out``.

    Args:
        source: text files, folders, JSONL files (see :func:`s3_retriever.bulk.iter_documents`)
            or a Ray Dataset with ``id``, ``text`` and optional ``metadata`` columns.
        out: a new or empty folder, or the folder of an interrupted build to resume.
        model_path, sae_path, config, compact, dtype: as for
            :meth:`S3Retriever.from_pretrained`.
        ray_address: the Ray cluster to run on; ``None`` starts or joins a local one.
        num_actors: scan actors (model copies); each takes one GPU when the cluster has GPUs.
        cpus_per_actor: CPUs Ray reserves for each scan actor.
        batch_size: documents per scan call.
        commit_every: a shard is saved after this many new documents of its own.
        progress: a progress bar (only on a terminal).
        on_commit: called after every shard save.
    """
    if num_shards < 1:
        raise ValueError(f"num_shards must be at least 1, got {num_shards}")
    if commit_every < 1 or batch_size < 1 or num_actors < 1:
        raise ValueError("commit_every, batch_size and num_actors must be at least 1")
    root = Path(out)
    layout.check_output_folder(root)
    root.mkdir(parents=True, exist_ok=True)
    ray = ensure_ray(ray_address)
    gpus = ray.cluster_resources().get("GPU", 0) >= 1
    if config is not None and config.scoring.cluster_search_above is not None:
        # Shards read every key (their softmax normalisers must add up), so the k-means
        # clusters a large index saves for clustered search would never be read.
        config = config.replace(
            scoring=dataclasses.replace(config.scoring, cluster_search_above=None)
        )
    spec = {
        "model_path": None if model_path is None else str(model_path),
        "sae_path": None if sae_path is None else str(sae_path),
        "config": None if config is None else config.to_dict(),
        "compact": compact,
        "device": "cuda" if gpus else "cpu",
        "dtype": dtype,
    }
    writer = _ShardWriters(root, num_shards, _open_retriever({**spec, "device": "cpu"}))
    report = BuildReport(skipped=0)
    pending, rows = _plan(source, writer, num_shards, report)
    if pending:
        writer.manifest.complete = False
    bar = _progress_bar(len(pending) + report.skipped, progress, report.skipped)
    try:
        for seq, scanned in _scan(ray, rows, spec, gpus, (num_actors, cpus_per_actor), batch_size):
            doc = pending.pop(seq)
            shard = shard_of(doc.doc_id, num_shards)
            writer.add(shard, seq, doc, scanned)
            report.added += 1
            report.tokens += len(scanned.tokenized[0])
            if bar is not None:
                bar.update(1)
            if writer.waiting(shard) >= commit_every:
                writer.commit(shard)
                report.commits += 1
                if on_commit is not None:
                    on_commit(report)
        report.commits += writer.finish()
    finally:
        if bar is not None:
            bar.close()
    report.shards = [len(r) for r in writer.shards]
    return report


def _plan(
    source: Any, writer: _ShardWriters, num_shards: int, report: BuildReport
) -> tuple[dict[int, SourceDocument], list[dict[str, Any]]]:
    """Number the source's documents and keep those no shard holds yet."""
    done = writer.committed_ids()
    seen: set[str] = set()
    pending: dict[int, SourceDocument] = {}
    rows: list[dict[str, Any]] = []
    seq = -1
    for seq, doc in enumerate(_source_documents(source)):
        if doc.doc_id in seen:
            raise SourceError(f"document id {doc.doc_id!r} appears twice; ids must be unique")
        seen.add(doc.doc_id)
        if doc.doc_id in done:
            report.skipped += 1
            continue
        pending[seq] = doc
        rows.append({"seq": seq, "text": doc.text})
    writer.manifest.next_seq = max(writer.manifest.next_seq, seq + 1)
    return pending, rows


def _scan(
    ray: Any,
    rows: list[dict[str, Any]],
    spec: dict[str, Any],
    gpus: bool,
    actors: tuple[int, float],
    batch_size: int,
) -> Iterator[tuple[int, ScannedTexts]]:
    """``(sequence number, scanned document)`` in sequence order, scanned on the actor pool."""
    if not rows:
        return
    from ray.data import ActorPoolStrategy, DataContext

    context = DataContext.get_current()
    # Shards must receive their documents in sequence order; Ray's own bars would print
    # on logs too (ours shows only on a terminal).
    saved = (context.execution_options.preserve_order, context.enable_progress_bars)
    context.execution_options.preserve_order = True
    context.enable_progress_bars = False
    try:
        scanned = ray.data.from_items(rows).map_batches(
            ScanActor,
            fn_constructor_kwargs={"spec": spec},
            batch_size=batch_size,
            batch_format="numpy",
            compute=ActorPoolStrategy(size=actors[0], **_calls_per_actor(gpus)),
            num_cpus=actors[1],
            # Ray Data restarts a killed actor and runs its batch again (its actor pools
            # default to max_restarts=-1 and max_task_retries=-1).
            num_gpus=1 if gpus else 0,
        )
        for batch in scanned.iter_batches(batch_size=None, batch_format="numpy"):
            for seq, payload in zip(batch["seq"].tolist(), batch["payload"], strict=True):
                yield int(seq), pickle.loads(payload)  # noqa: S301 - produced by ScanActor above
    finally:
        context.execution_options.preserve_order, context.enable_progress_bars = saved


def _calls_per_actor(gpus: bool) -> dict[str, Any]:
    """Two scan calls at once on a GPU actor: while one scans, the other tokenises its texts
    and serialises its result (about 0.2 s per 32k-token document of Llama-3.1-8B), which would
    otherwise leave the GPU idle between calls (benchmarks/gpu_ray_scan.py,
    docs/results/bench_gpu_ray_scan.md). On CPU, two scans would only share the same cores."""
    if not gpus:
        return {}
    return {"max_concurrent_calls_per_actor": 2, "enable_true_multi_threading": True}


class _ShardWriters:
    """The shards being built: committed documents on disk, scanned ones waiting."""

    def __init__(self, root: Path, num_shards: int, template: S3Retriever) -> None:
        self.root = root
        if layout.is_sharded(root):
            self.manifest = layout.read_manifest(root)
            if self.manifest.num_shards != num_shards:
                raise ValueError(
                    f"{root} holds a build of {self.manifest.num_shards} shards, not "
                    f"{num_shards}; resume it with --shards {self.manifest.num_shards} or "
                    f"give a new folder"
                )
        else:
            self.manifest = layout.ShardedManifest(num_shards=num_shards)
        self.shards: list[S3Retriever] = []
        self.orders: list[np.ndarray] = []
        for i in range(num_shards):
            if layout.shard_folder(root, i) is not None:
                # Resuming: the shard's folder is the truth (the manifest may lag one save).
                shard, order = layout.load_shard(root, i, None, loaded=template.loaded)
                if shard.config != template.config:
                    raise ValueError(
                        f"{root} was built with other settings; resume it with the same ones "
                        f"or give a new folder"
                    )
            else:
                shard = S3Retriever(template.loaded, template.bundle, template.config)
                order = np.zeros(0, np.int64)
            self.shards.append(shard)
            self.orders.append(order)
        self._waiting: list[list[tuple[int, SourceDocument, ScannedTexts]]] = [
            [] for _ in range(num_shards)
        ]

    def committed_ids(self) -> set[str]:
        return {doc_id for shard in self.shards for doc_id in shard.index.corpus.doc_ids}

    def add(self, shard: int, seq: int, doc: SourceDocument, scanned: ScannedTexts) -> None:
        self._waiting[shard].append((seq, doc, scanned))

    def waiting(self, shard: int) -> int:
        return len(self._waiting[shard])

    def commit(self, shard: int) -> None:
        """Add the shard's waiting documents and save it, then the manifest."""
        waiting = self._waiting[shard]
        if waiting:
            retriever = self.shards[shard]
            retriever.add_scanned(
                join_scanned([s for _, _, s in waiting]),
                [d.doc_id for _, d, _ in waiting],
                [d.metadata for _, d, _ in waiting],
            )
            self.orders[shard] = np.concatenate(
                [self.orders[shard], np.asarray([q for q, _, _ in waiting], np.int64)]
            )
        self.manifest.shards[shard] = layout.write_shard(
            self.root, shard, self.shards[shard], self.orders[shard]
        )
        self._waiting[shard] = []
        layout.write_manifest(self.root, self.manifest)

    def finish(self) -> int:
        """Commit what is left (and every shard never written); mark the build complete."""
        commits = 0
        for shard in range(len(self.shards)):
            entry = self.manifest.shards[shard]
            unwritten = entry.checksum is None or layout.shard_folder(self.root, shard) is None
            if self._waiting[shard] or unwritten or entry.n_documents != len(self.shards[shard]):
                self.commit(shard)
                commits += 1
        self.manifest.complete = True
        layout.write_manifest(self.root, self.manifest)
        return commits


def _progress_bar(total: int, enabled: bool, done: int) -> Any:
    if not enabled:
        return None
    from tqdm.auto import tqdm

    # disable=None: no bar when stderr is not a terminal (logs, pipes, CI).
    return tqdm(total=total, initial=done, unit="doc", desc="indexing", disable=None)
