"""``S3Retriever``: the public entry point, a thin facade over the stage packages.

Writing: texts are tokenized and scanned (:mod:`s3_retriever.model`), their keys coded by the SAEs
(:mod:`s3_retriever.index.key_encoding`) and committed to the :class:`~s3_retriever.index.Index`.
Reading: :func:`s3_retriever.search.pipeline.search` takes a question to hits. Saving: the index
writes itself (:mod:`s3_retriever.index.storage`) with the header of :mod:`s3_retriever.header`.

Public surface, for scripts and benchmarks as for applications: :attr:`S3Retriever.model` (the
loaded model), :attr:`~S3Retriever.bundle` (its SAEs), :attr:`~S3Retriever.config`,
:attr:`~S3Retriever.index` (corpus, key stores, postings, BM25), :attr:`~S3Retriever.scanner`
(the model scan), :attr:`~S3Retriever.heads`, :attr:`~S3Retriever.fields` and
:attr:`~S3Retriever.kv_group`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from s3_retriever.config import RetrieverConfig
from s3_retriever.console import Progress
from s3_retriever.errors import SAEError
from s3_retriever.header import build_header, check_heads_match, open_saved
from s3_retriever.heads import check_heads, check_saes, fallback_heads, fields_of
from s3_retriever.index.index import Index
from s3_retriever.index.key_encoding import KeyEncoder
from s3_retriever.index.scanned import (
    ScannedTexts,
    commit_read,
    commit_scanned,
    read_texts,
    scan_texts,
)
from s3_retriever.index.storage import fill_index, save_index
from s3_retriever.inputs import check_id_type, check_ids_free, new_documents, retrieve_arguments
from s3_retriever.model.loading import LoadedModel, attention_shape, load_model
from s3_retriever.model.scan import Scanner
from s3_retriever.rwlock import ReadWriteLock
from s3_retriever.sae.bundle import COMPACT_VARIANT, SAEBundle, shipped_bundle_dir
from s3_retriever.search.filters import Filters
from s3_retriever.search.hits import Hit, in_order
from s3_retriever.search.pipeline import search as run_search
from s3_retriever.search.position_scores import PositionScoring
from s3_retriever.search.question import QuestionEncoder
from s3_retriever.search.settings import MODES, ORDERS, Mode, Order, SearchSettings

__all__ = [
    "MODES",
    "ORDERS",
    "Hit",
    "Mode",
    "Order",
    "S3Retriever",
    "ScannedTexts",
    "SearchSettings",
]


class S3Retriever(PositionScoring):
    """Retrieve evidence spans from long documents with a language model's own attention.

    Build one with :meth:`from_pretrained`, add texts with :meth:`add_documents`, then call
    :meth:`retrieve`. One instance may be shared between threads: queries run in parallel
    with each other (a readers-writer lock, :mod:`s3_retriever.rwlock`), and an add scans
    without the lock, blocking queries only while it commits.
    """

    def __init__(
        self, loaded: LoadedModel, bundle: SAEBundle, config: RetrieverConfig | None = None
    ) -> None:
        self.model = loaded
        """The loaded model, tokenizer and fingerprints."""
        self.bundle = bundle
        """The SAE bundle keys are coded with."""
        self.config = config or RetrieverConfig()
        """The settings the index was built with; :meth:`retrieve` searches with their
        query-time part unless handed other :class:`SearchSettings`."""
        n_layers, n_heads, n_kv, head_dim = attention_shape(loaded.model)
        bundle.check_fits(n_layers, n_heads, head_dim)
        self.kv_group = n_heads // n_kv
        """Query heads per KV head (GQA)."""
        chosen = (
            self.config.retrieval_heads
            or bundle.retrieval_heads
            or fallback_heads(n_layers, n_heads)
        )
        self.heads = check_heads(chosen, n_layers, n_heads)
        """(layer, query head) pairs that score."""
        self.fields = fields_of(self.heads, self.kv_group)
        """(layer, KV head) fields whose keys are indexed."""
        if self.config.store_postings:
            check_saes(bundle, self.fields, n_kv)
        layers = sorted({layer for layer, _ in self.heads})
        self.scanner = Scanner(
            loaded.model,
            layers,
            layers,
            self.config.scan,
            bos_token_id=loaded.tokenizer.bos_token_id,
        )
        """The model scan that reads documents and questions."""
        self._encoder = KeyEncoder(
            bundle,
            self.fields,
            head_dim,
            self.scanner.device,
            store_keys=self.config.store_keys,
            store_postings=self.config.store_postings,
        )
        postings_latents = {
            f: bundle.saes[f[0]].config.n_latents for f in self.fields if self.config.store_postings
        }
        self.index = Index(
            self.fields if self.config.store_keys else (),
            head_dim,
            postings_latents,
            self.config.segment,
            self.config.lexical,
        )
        """Everything a search reads: corpus, key stores, postings, clusters and BM25."""
        self._questions = QuestionEncoder(self.scanner, loaded.tokenizer, self.heads)
        self._lock = ReadWriteLock()
        self._save_lock = threading.Lock()

    @property
    def loaded(self) -> LoadedModel:
        """Older name of :attr:`model`."""
        return self.model

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_pretrained(
        cls,
        model_path: str | os.PathLike[str] | None = None,
        sae_path: str | os.PathLike[str] | None = None,
        config: RetrieverConfig | None = None,
        *,
        device: str = "cpu",
        dtype: str = "auto",
        compact: bool = False,
    ) -> S3Retriever:
        """Load a model and its SAE bundle.

        Args:
            model_path: ``None`` for the bundled SmolLM2-135M-Instruct, else a model folder or
                hub id.
            sae_path: SAE bundle folder; ``None`` takes the bundle shipped for the model.
            config: retriever settings; defaults are the measured ones.
            device: torch device for the scan.
            dtype: ``auto`` (bf16), ``bfloat16``, ``float16`` or ``float32``.
            compact: a small index: the shipped compact SAEs (unless ``sae_path`` is given) and
                :meth:`RetrieverConfig.compact` (unless ``config`` is given): postings only,
                scored through the SAE, ~12x smaller than stored keys for ~95% of their recall.
        """
        loaded = load_model(model_path, dtype=dtype, device=device)
        if sae_path is None:
            shipped = shipped_bundle_dir(loaded.model_id, COMPACT_VARIANT if compact else None)
            if not (shipped / "config.json").is_file():
                which = "compact SAE bundle" if compact else "SAE bundle"
                raise SAEError(
                    f"No {which} ships for {loaded.model_id!r}. Train one with "
                    f"`s3-retriever train-sae --model {model_path} --out DIR` (for a compact "
                    f"one: --k-keys 4 --key-heads retrieval --key-coding pursuit) and pass "
                    f"sae_path=DIR."
                )
            sae_path = shipped
        if compact and config is None:
            config = RetrieverConfig.compact()
        return cls(loaded, SAEBundle.load(Path(sae_path)), config)

    # ------------------------------------------------------------------ writing
    def add_documents(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None = None,
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
        *,
        replace: bool = False,
        progress: Progress = None,
    ) -> list[str]:
        """Scan and index ``texts``; returns their ids (new UUIDs where ``ids`` is None).

        An id that is already indexed is refused, unless ``replace=True``: then that document is
        replaced by the new text and metadata (an upsert). Nothing is committed unless every
        document was scanned, so an interrupted call leaves the index as it was, and a reader
        sees either the old documents or the new ones. ``progress`` switches the scan's
        progress bar for this call (:mod:`s3_retriever.console`); ``None`` keeps
        ``config.scan.show_progress``, by default a bar only on a terminal.
        """
        existing = () if replace else self.index.corpus.doc_ids
        texts, ids_list, metas = new_documents(texts, ids, metadatas, existing)
        if not texts:
            return []
        # Long calls are staged in the index's own encodings as the scan goes, so their peak
        # follows the index they add (docs/performance.md, "Staged adds are slower on a GPU").
        read = read_texts(
            self.scanner,
            self._encoder,
            self.model.tokenizer,
            self.index,
            self.fields,
            texts,
            progress,
        )
        # Scanned without the lock (queries keep running), at positions counted from this
        # call's first document; the commit moves them after what the index holds.
        with self._lock.write():
            if replace:
                rows_by_id = self.index.corpus.row_of()
                replaced = [i for i in ids_list if i in rows_by_id]
                if replaced:
                    self.index.delete(replaced)
            else:
                # Checked again under the lock: another thread may have added these ids.
                check_ids_free(ids_list, self.index.corpus.doc_ids)
            commit_read(self.index, read, ids_list, metas)
        return ids_list

    def scan_texts(self, texts: Sequence[str], *, progress: Progress = None) -> ScannedTexts:
        """Read ``texts`` without indexing them (a sharded build scans on workers);
        :meth:`add_scanned` commits them."""
        return scan_texts(
            self.scanner, self._encoder, self.model.tokenizer, self.fields, texts, progress
        )

    def add_scanned(
        self,
        scanned: ScannedTexts,
        ids: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        """Index texts read by :meth:`scan_texts` of this model and SAEs; returns their ids."""
        texts, ids_list, metas = new_documents(scanned.texts, ids, metadatas, self.doc_ids)
        with self._lock.write():
            check_ids_free(ids_list, self.index.corpus.doc_ids)
            commit_scanned(self.index, scanned, ids_list, metas)
        return ids_list

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many were removed (unknown ids are ignored)."""
        if isinstance(ids, str):
            ids = [ids]
        ids = list(ids)
        for i, doc_id in enumerate(ids):
            check_id_type(doc_id, f"ids[{i}]")
        with self._lock.write():
            return self.index.delete(ids)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.index)

    @property
    def doc_ids(self) -> list[str]:
        return self.index.doc_ids

    def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        token_budget: int = 1024,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        *,
        order: Order = "document",
        search: SearchSettings | None = None,
    ) -> list[Hit]:
        """Evidence spans for ``query`` within ``token_budget`` model tokens.

        Only units whose relevance reaches ``spans.min_relevance`` start spans, so no span
        without evidence pads the budget; fewer spans than ``top_k`` (with a
        :class:`~s3_retriever.FewerHitsWarning`) or fewer tokens than the budget may come back.

        Args:
            query: the question. Empty or whitespace-only gives ``[]``.
            top_k: keep at most this many spans (the best-scoring ones); ``None`` keeps all that
                fit the budget. Values above the number of spans are clamped.
            token_budget: total model tokens of the returned spans.
            mode: ``hybrid`` (S3 + BM25), ``s3`` (S3-Pure) or ``bm25``.
            filters: metadata filters (see :mod:`s3_retriever.search.filters`), applied before
                ranking.
            order: ``document`` (by document, then position: reads like the source) or
                ``score`` (best first; ties keep document order).
            search: scorer, span and fusion settings for this call only; ``None`` takes
                :meth:`RetrieverConfig.search_settings` of :attr:`config`. The retriever is
                not changed, so calls with different settings may share it.
        """
        checked = retrieve_arguments(query, top_k, token_budget, mode, order)
        if checked is None:
            return []
        top_k, token_budget = checked
        settings = search or self.config.search_settings()
        with self._lock.read():
            hits = run_search(
                self.index,
                query,
                self._questions,
                self.bundle,
                self.kv_group,
                settings,
                mode,
                token_budget,
                top_k,
                filters,
            )
        return in_order(hits, order)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to a versioned directory, atomically (see :mod:`.index.storage`)."""
        header = build_header(self.model, self.bundle, self.config, self.heads, self.fields)
        # Saving only reads the index, so queries go on meanwhile; commits wait. Saves take
        # turns, since each records the version it wrote (index.versions).
        with self._save_lock, self._lock.read():
            save_index(
                self.index,
                header,
                self.bundle,
                Path(path),
                self.config.scoring.cluster_search_above,
            )

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        dtype: str | None = None,
        loaded: LoadedModel | None = None,
    ) -> S3Retriever:
        """Load an index saved by :meth:`save`; refuses one built by another model or SAEs.

        ``dtype`` defaults to the precision the index was built with; ``loaded``: a model in memory.
        """
        stored, loaded, config = open_saved(
            Path(path), model_path=model_path, device=device, dtype=dtype, loaded=loaded
        )
        assert stored.bundle is not None
        retriever = cls(loaded, stored.bundle, config)
        check_heads_match(stored, retriever.heads)
        fill_index(retriever.index, stored, path)
        return retriever
