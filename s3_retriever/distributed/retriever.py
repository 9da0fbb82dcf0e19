"""``ShardedRetriever``: search and update a sharded index with one Ray actor per shard.

The driver holds the model for the question's forward pass (run once per question) and merges
the shards' answers (:mod:`s3_retriever.distributed.merge`); each shard actor holds one shard's
index (:class:`s3_retriever.distributed.shard.ShardWorker`). The result is the one an
:class:`~s3_retriever.S3Retriever` over the same documents, added in the same order, returns.
"""

from __future__ import annotations

import itertools
import os
import threading
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

import s3_retriever.distributed.layout as layout
from s3_retriever.distributed._ray import ensure_ray
from s3_retriever.distributed.actors import ShardActor, Shards, query_encoder
from s3_retriever.distributed.lexical_stats import BM25Stats
from s3_retriever.distributed.merge import (
    GlobalUnit,
    MergedRanking,
    ReciprocalRankFusion,
    combine_bests,
    combine_lse,
    global_units,
    grown_groups,
    pack,
    runs,
)
from s3_retriever.distributed.query_state import PEAK_LIMIT
from s3_retriever.distributed.routing import shard_of
from s3_retriever.distributed.shard import ShardWorker
from s3_retriever.errors import IndexLoadError
from s3_retriever.inputs import check_ids_free, new_documents, retrieve_arguments
from s3_retriever.model.scan import tokenize
from s3_retriever.retriever import S3Retriever
from s3_retriever.search.filters import Filters
from s3_retriever.search.hits import Hit, in_order
from s3_retriever.search.relevance import warn_fewer_hits
from s3_retriever.search.settings import Mode, Order
from s3_retriever.search.spans import standalone_fit

_FIRST_PAGE = 64
"""Entries of each ranking a shard sends with its scores; most questions need no more."""


class ShardedRetriever:
    """:class:`~s3_retriever.S3Retriever`'s ``retrieve``, ``add_documents``, ``delete`` and
    ``save`` over a sharded index. Build one with :func:`s3_retriever.distributed.build_index`,
    open it with :meth:`load`."""

    def __init__(
        self,
        root: Path | None,
        manifest: layout.ShardedManifest,
        encoder: S3Retriever,
        shards: Shards,
        doc_ids: Sequence[str],
    ) -> None:
        self.root = root
        self.manifest = manifest
        self.encoder = encoder
        self.config = encoder.config
        self._shards = shards
        self._ids = set(doc_ids)
        self._lock = threading.RLock()

    # ------------------------------------------------------------------ construction
    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        ray_address: str | None = None,
        num_cpus_per_shard: float = 0.5,
        use_ray: bool = True,
    ) -> ShardedRetriever:
        """Open the sharded index at ``path``: one Ray actor per shard, the model here.

        Args:
            model_path: the model the index was built with (``None``: the bundled one).
            ray_address: Ray cluster to join; ``None`` starts or reuses a local one.
            num_cpus_per_shard: CPUs Ray reserves for each shard actor.
            use_ray: ``False`` holds the shards in this process instead (no Ray needed).
        """
        root = Path(path)
        manifest = layout.read_manifest(root)
        if not manifest.complete:
            raise IndexLoadError(
                f"{root} is a sharded index whose build did not finish; run the same "
                f"`s3-retriever index ... --out {root} --shards {manifest.num_shards}` to resume."
            )
        model = None if model_path is None else str(model_path)
        entries = [vars(e) for e in manifest.shards]
        ray = ensure_ray(ray_address) if use_ray else None
        if ray is None:
            handles: list[Any] = [
                ShardWorker.open(root, i, entries[i], model, device, dtype)
                for i in range(manifest.num_shards)
            ]
        else:
            actor = ray.remote(ShardActor).options(num_cpus=num_cpus_per_shard)
            handles = [
                actor.remote(str(root.resolve()), i, entries[i], model, device, dtype)
                for i in range(manifest.num_shards)
            ]
        encoder = query_encoder(root, model, device, dtype)
        shards = Shards(handles, ray)
        doc_ids = [i for ids in shards.all("doc_ids") for i in ids]
        return cls(root, manifest, encoder, shards, doc_ids)

    def close(self) -> None:
        """Stop the shard actors (unsaved changes are lost)."""
        if self._shards.ray is not None:
            for handle in self._shards.handles:
                self._shards.ray.kill(handle)
        self._shards.handles = []

    @property
    def num_shards(self) -> int:
        return len(self._shards)

    def __len__(self) -> int:
        return len(self._ids)

    @property
    def doc_ids(self) -> list[str]:
        return sorted(self._ids)

    @property
    def round_trips(self) -> int:
        """Waits for shard answers so far (a wait covers every shard asked at once)."""
        return self._shards.round_trips

    def shard_info(self) -> list[dict[str, Any]]:
        """Documents, positions, units and bytes of every shard."""
        return self._shards.all("info")

    # ------------------------------------------------------------------ writing
    def add_documents(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        replace: bool = False,
    ) -> list[str]:
        """Scan and index ``texts`` on the shards that own their ids; returns the ids.

        As :meth:`S3Retriever.add_documents`: an id that is already indexed is refused, unless
        ``replace=True``; then that document is replaced by the new text and metadata (an
        upsert), on the shard that owns the id, and it comes after every document already
        indexed, as in one index. Every shard scans first and commits (deleting what it
        replaces) only when all scans succeeded, so a failed scan leaves the index as it was.
        """
        texts_list, ids_list, metas = new_documents(texts, ids, metadatas, [])
        with self._lock:
            if not replace:
                check_ids_free(ids_list, list(self._ids))
            if not texts_list:
                return []
            per_shard: dict[int, tuple[list[str], list[str], list[dict[str, Any]], list[int]]] = {}
            for offset, (text, doc_id, meta) in enumerate(
                zip(texts_list, ids_list, metas, strict=True)
            ):
                shard = shard_of(doc_id, self.num_shards)
                part = per_shard.setdefault(shard, ([], [], [], []))
                part[0].append(text)
                part[1].append(doc_id)
                part[2].append(meta)
                part[3].append(self.manifest.next_seq + offset)
            try:
                self._shards.each("stage", per_shard)
            except BaseException:
                self._shards.each("discard_staged", dict.fromkeys(per_shard, ()))
                raise
            self._shards.each(
                "commit_staged",
                {s: ([i for i in part[1] if i in self._ids],) for s, part in per_shard.items()},
            )
            self.manifest.next_seq += len(texts_list)
            self._ids.update(ids_list)
        return ids_list

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many were removed (unknown ids are ignored)."""
        if isinstance(ids, str):
            ids = [ids]
        with self._lock:
            known = [i for i in dict.fromkeys(ids) if i in self._ids]
            per_shard: dict[int, list[str]] = {}
            for doc_id in known:
                per_shard.setdefault(shard_of(doc_id, self.num_shards), []).append(doc_id)
            removed = self._shards.each("delete", {s: (d,) for s, d in per_shard.items()})
            self._ids.difference_update(known)
            return int(sum(removed.values()))

    def save(self, path: str | os.PathLike[str] | None = None) -> None:
        """Write every shard (each atomically), then the manifest; ``None``: where it was
        loaded from."""
        if path is None and self.root is None:
            raise ValueError("this index was not loaded from a folder; pass the folder to save to")
        root = Path(path) if path is not None else self.root
        assert root is not None
        with self._lock:
            if root != self.root:
                layout.check_output_folder(root)
            root.mkdir(parents=True, exist_ok=True)
            entries = self._shards.all("save", str(root.resolve()))
            manifest = layout.ShardedManifest(
                num_shards=self.num_shards,
                next_seq=self.manifest.next_seq,
                complete=True,
                shards=[layout.ShardEntry(**e) for e in entries],
            )
            layout.write_manifest(root, manifest)
            self.manifest = manifest

    # ------------------------------------------------------------------ reading
    def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        token_budget: int = 1024,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        *,
        order: Order = "document",
    ) -> list[Hit]:
        """:meth:`S3Retriever.retrieve` over every shard: the same spans, scores and
        relevance as one index over the same documents, relevance floor
        (``spans.min_relevance``) included."""
        checked = retrieve_arguments(query, top_k, token_budget, mode, order)
        if checked is None:
            return []
        top_k, token_budget = checked
        if mode == "hybrid" and self.config.hybrid.fusion != "rrf":
            raise ValueError(
                "a sharded search fuses S3 and BM25 by reciprocal-rank fusion only (the default "
                "HybridConfig(fusion='rrf')); use mode='s3' or 'bm25' with other fusion settings"
            )
        vectors = self.encoder.question_vectors(query) if mode != "bm25" else None
        qid = uuid.uuid4().hex
        with self._lock:
            try:
                hits = self._retrieve(qid, query, vectors, top_k, token_budget, mode, filters)
            finally:
                self._shards.tell("finish", qid)
        return in_order(hits, order)

    def bm25_statistics(self, query: str, filters: Filters | None = None) -> BM25Stats:
        """The corpus-wide BM25 statistics the shards combine for ``query``: units, total
        length and each query term's document frequency (as one index over every shard)."""
        qid = uuid.uuid4().hex
        with self._lock:
            try:
                prepared = self._shards.all("prepare", qid, None, filters, "bm25", query)
            finally:
                self._shards.all("finish", qid)
        return BM25Stats.combine([p.bm25 for p in prepared])

    def _retrieve(
        self,
        qid: str,
        query: str,
        vectors: dict[tuple[int, int], np.ndarray] | None,
        top_k: int | None,
        token_budget: int,
        mode: str,
        filters: Filters | None,
    ) -> list[Hit]:
        prepared = self._shards.all("prepare", qid, vectors, filters, mode, query)
        if sum(p.n_units for p in prepared) == 0 or not any(p.any_candidate for p in prepared):
            return []
        row_lse = combine_lse([p.row_lse for p in prepared]) if mode != "bm25" else None
        bm25 = BM25Stats.combine([p.bm25 for p in prepared]) if mode != "s3" else None
        bests = combine_bests(self._shards.all("score", qid, vectors, row_lse, bm25))
        floor = self.config.spans.min_relevance
        # As s3_retriever.search.ranking.rank: growth stops at a quarter of the budget.
        min_tokens = min(self.config.spans.min_span_tokens, max(token_budget // 4, 1))
        scored = self._shards.all("rank", qid, bests, floor, min_tokens, _FIRST_PAGE)
        smallest = min(p.smallest_unit for p in prepared if p.smallest_unit is not None)
        rankings = {
            name: MergedRanking(
                [s["lists"][name] for s in scored],
                [s["sizes"][name] for s in scored],
                self._pager(qid, name),
            )
            for name in scored[0]["lists"]
        }
        fusion = None
        if mode == "hybrid":
            fusion = self._fusion(qid)
            ranked = fusion.ranking(rankings["s3"], rankings["bm25"], PEAK_LIMIT)
            seeds = self._hybrid_groups(qid, fusion, ranked)
        else:
            seeds = grown_groups(rankings[mode])
        # Lead and tail groups come first, document by document in corpus order.
        lead = sorted(
            (
                global_units(shard, group)
                for shard, answer in enumerate(scored)
                for group in answer["lead_tail"]
            ),
            key=lambda group: group[0][0],
        )
        chosen = runs(pack(itertools.chain(lead, seeds), token_budget, smallest, top_k))
        hits = self._hits(qid, chosen, fusion)
        # As s3_retriever.search.spans.fit_standalone: each span's text tokenised alone fits too.
        tokenizer = self.encoder.model.tokenizer
        kept = standalone_fit(
            [len(tokenize(tokenizer, h.text)) for h in hits], [h.score for h in hits], token_budget
        )
        hits = [hits[i] for i in kept]
        if top_k is not None and len(hits) < top_k:
            passing = sum(p.documents[0] for p in prepared)
            documents = (passing, sum(p.documents[1] for p in prepared)) if filters else None
            used = sum(unit[4] for i in kept for unit in chosen[i])
            warn_fewer_hits(len(hits), top_k, used, token_budget, documents, floor)
        return hits

    def _pager(self, qid: str, name: str) -> Callable[[dict[int, tuple[int, int]]], dict[int, Any]]:
        def fetch(wanted: dict[int, tuple[int, int]]) -> dict[int, Any]:
            return self._shards.each("page", {s: (qid, name, a, n) for s, (a, n) in wanted.items()})

        return fetch

    def _fusion(self, qid: str) -> ReciprocalRankFusion:
        hybrid = self.config.hybrid

        def keys_of(units: list[tuple[int, int]]) -> dict[tuple[int, int], Any]:
            by_shard: dict[int, list[int]] = {}
            for shard, unit in units:
                by_shard.setdefault(shard, []).append(unit)
            answers = self._shards.each("rank_keys", {s: (qid, u) for s, u in by_shard.items()})
            return {
                (shard, unit): keys
                for shard, units_of in by_shard.items()
                for unit, keys in zip(units_of, answers[shard], strict=True)
            }

        def global_ranks(keys: dict[str, list[Any]]) -> dict[str, np.ndarray]:
            counts = self._shards.all("count_before", qid, keys)
            return {name: np.sum([c[name] for c in counts], axis=0) for name in keys}

        return ReciprocalRankFusion(
            (hybrid.s3_weight, hybrid.bm25_weight), hybrid.rrf_k, keys_of, global_ranks
        )

    def _hybrid_groups(
        self, qid: str, fusion: ReciprocalRankFusion, seeds: Iterator[tuple[int, int, float]]
    ) -> Iterator[list[GlobalUnit]]:
        """Spans grown from fused-ranked seeds, a batch of seeds at a time: each shard names
        the units growth may look at, the driver fuses their scores, the shard grows."""
        batch_size = 64
        while True:
            batch = [s for _, s in zip(range(batch_size), seeds, strict=False)]
            if not batch:
                return
            batch_size *= 4
            by_shard: dict[int, list[int]] = {}
            for shard, unit, _ in batch:
                by_shard.setdefault(shard, []).append(unit)
            answers = self._shards.each(
                "neighbourhoods", {s: (qid, u) for s, u in by_shard.items()}
            )
            near = {s: lists for s, (lists, _) in answers.items()}
            for shard, (_, keys) in answers.items():
                fusion.keys.update({(shard, u): k for u, k in keys.items()})
            wanted = [(s, u) for s, lists in near.items() for units in lists for u in units]
            fused = fusion.fused(wanted)
            grown = self._shards.each(
                "grow",
                {
                    s: (qid, units, {u: fused[(s, u)] for lst in near[s] for u in lst})
                    for s, units in by_shard.items()
                },
            )
            place = {s: iter(groups) for s, groups in grown.items()}
            for shard, _, _ in batch:
                yield global_units(shard, next(place[shard]))

    def _hits(
        self, qid: str, spans: list[list[GlobalUnit]], fusion: ReciprocalRankFusion | None
    ) -> list[Hit]:
        """The chosen runs as hits, in corpus order; hybrid runs score their best fused unit."""
        ranked: list[float] | None = None
        if fusion is not None:
            fused = fusion.fused((u[2], u[3]) for run in spans for u in run)
            ranked = [max(fused[(u[2], u[3])] for u in run) for run in spans]
        by_shard: dict[int, list[int]] = {}
        for place, run in enumerate(spans):
            by_shard.setdefault(run[0][2], []).append(place)
        answers = self._shards.each(
            "hits",
            {
                shard: (
                    qid,
                    [[u[3] for u in spans[p]] for p in places],
                    None if ranked is None else [ranked[p] for p in places],
                )
                for shard, places in by_shard.items()
            },
        )
        fields: dict[int, dict[str, Any]] = {}
        for shard, places in by_shard.items():
            fields.update(zip(places, answers[shard], strict=True))
        return [Hit(**fields[p]) for p in range(len(spans))]
