"""``S3Retriever``: the public entry point that ties scan, index, scoring and fusion together."""

from __future__ import annotations

import copy
import functools
import itertools
import operator
import os
import threading
import uuid
import warnings
from collections import OrderedDict
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from s3_retriever.config import RetrieverConfig
from s3_retriever.corpus import Corpus, check_metadata
from s3_retriever.errors import SAEError
from s3_retriever.filters import Filters, document_mask
from s3_retriever.fusion import fuse, rank_order
from s3_retriever.index import Field, KeyStore, Postings
from s3_retriever.key_encoding import KeyEncoder, NewCodes, NewKeys
from s3_retriever.lexical import BM25Index
from s3_retriever.models import LoadedModel, attention_shape, load_model
from s3_retriever.sae import COMPACT_VARIANT, SAEBundle, shipped_bundle_dir
from s3_retriever.scan import Scanner, TokenizedText, tokenize
from s3_retriever.scoring import (
    ScoringConfig,
    content_token_indices,
    position_logsumexp,
    score_positions,
)
from s3_retriever.segment import segment
from s3_retriever.spans import Seed, grow, merge_adjacent, pack, peak_units, smooth, unit_scores

Mode = Literal["hybrid", "s3", "bm25"]
MODES: tuple[str, ...] = ("hybrid", "s3", "bm25")


_QUERY_CACHE_SIZE = 32
"""Questions whose query projections a retriever remembers (a few MB at most)."""


@dataclass(frozen=True)
class Hit:
    """One evidence span. ``text == source[start_char:end_char]`` exactly."""

    doc_id: str
    """Id of the document the span comes from."""
    start_char: int
    """Start offset in the document's text."""
    end_char: int
    """End offset (exclusive) in the document's text."""
    text: str
    """The span's text."""
    score: float
    """The score that ranked it (fused score in hybrid mode)."""
    metadata: dict[str, Any] = field(default_factory=dict)
    """The document's metadata."""
    scores: dict[str, float] = field(default_factory=dict)
    """Component scores: ``s3`` and/or ``bm25``."""

    @property
    def id(self) -> str:
        """Deterministic span id ``doc_id:start:end``, unique within one result list."""
        return f"{self.doc_id}:{self.start_char}:{self.end_char}"


@dataclass(frozen=True)
class ScannedTexts:
    """Texts read by the model but not yet indexed (:meth:`S3Retriever.scan_texts`)."""

    texts: list[str]
    tokenized: list[TokenizedText]
    keys: NewKeys
    """Key field -> ``(positions, float32 keys)`` chunks; positions from the first text's start."""
    codes: NewCodes
    """Key field -> ``(positions, latent ids, activations)`` chunks, positioned like ``keys``."""


class S3Retriever:
    """Retrieve evidence spans from long documents with a language model's own attention.

    Build one with :meth:`from_pretrained`, add texts with :meth:`add_documents`, then call
    :meth:`retrieve`. Reads and writes are serialised by a lock, so one instance may be shared
    between threads.
    """

    def __init__(
        self, loaded: LoadedModel, bundle: SAEBundle, config: RetrieverConfig | None = None
    ) -> None:
        self.loaded = loaded
        self.bundle = bundle
        self.config = config or RetrieverConfig()
        n_layers, n_heads, n_kv, head_dim = attention_shape(loaded.model)
        bundle.check_fits(n_layers, n_heads, head_dim)
        self.kv_group = n_heads // n_kv
        heads = (
            self.config.retrieval_heads
            or bundle.retrieval_heads
            or _fallback_heads(n_layers, n_heads)
        )
        for layer, head in heads:
            if not (0 <= layer < n_layers and 0 <= head < n_heads):
                raise ValueError(
                    f"retrieval head ({layer}, {head}) does not exist: the model has {n_layers} "
                    f"layers of {n_heads} query heads"
                )
        self.heads: tuple[tuple[int, int], ...] = tuple(heads)
        self.fields: tuple[Field, ...] = tuple(
            sorted({(layer, head // self.kv_group) for layer, head in self.heads})
        )
        layers = sorted({layer for layer, _ in self.heads})
        if self.config.store_postings:
            missing = [layer for layer in layers if layer not in bundle.saes]
            if missing:
                raise SAEError(
                    f"No SAE for retrieval layer(s) {missing}; the bundle has layers "
                    f"{list(bundle.layers)}. Train SAEs for them (`s3-retriever train-sae`) or "
                    f"set store_postings=False to use the exact scorer only."
                )
            _warn_untrained_fields(bundle, self.fields, n_kv)
        self.scanner = Scanner(
            loaded.model,
            layers,
            layers,
            self.config.scan,
            bos_token_id=loaded.tokenizer.bos_token_id,
        )
        self.encoder = KeyEncoder(
            bundle,
            self.fields,
            head_dim,
            self.scanner.device,
            store_keys=self.config.store_keys,
            store_postings=self.config.store_postings,
        )
        self.corpus = Corpus()
        self.key_stores: dict[Field, KeyStore] = {
            f: KeyStore(head_dim) for f in self.fields if self.config.store_keys
        }
        self.postings: dict[Field, Postings] = {
            f: Postings(bundle.saes[f[0]].config.n_latents)
            for f in self.fields
            if self.config.store_postings
        }
        self.bm25 = BM25Index(self.config.lexical)
        self.index_versions: dict[str, str] = {}
        """Index folder -> sha256 of the manifest this retriever last loaded from or saved
        there; a save refuses to replace a version it has not seen (another writer's)."""
        self._lock = threading.RLock()
        self._query_cache: OrderedDict[str, dict[int, Any]] = OrderedDict()

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
    ) -> list[str]:
        """Scan and index ``texts``; returns their ids (new UUIDs where ``ids`` is None).

        Nothing is committed unless every document was scanned, so an interrupted call leaves
        the index as it was.
        """
        texts, ids_list, metas = self._validate_new(texts, ids, metadatas)
        if not texts:
            return []
        with self._lock:
            # Checked again under the lock: another thread may have added these ids meanwhile.
            self._check_ids_free(ids_list)
            self._commit(self.scan_texts(texts), ids_list, metas)
        return ids_list

    def scan_texts(self, texts: Sequence[str]) -> ScannedTexts:
        """Read ``texts`` with the model without indexing them; :meth:`add_scanned` commits them.

        Positions count from the first text's first token. A sharded build scans on workers and
        commits on the shard that owns each document (:mod:`s3_retriever.distributed`).
        """
        tokenized = [tokenize(self.loaded.tokenizer, text) for text in texts]
        doc_base = np.concatenate([[0], np.cumsum([len(t) for t in tokenized])[:-1]]).astype(
            np.int64
        )
        new_keys: NewKeys = {f: [] for f in self.fields}
        new_codes: NewCodes = {f: [] for f in self.fields}
        with self._lock:
            self.encoder.run(self.scanner.scan_batches(tokenized), doc_base, new_keys, new_codes)
        return ScannedTexts(list(texts), tokenized, new_keys, new_codes)

    def add_scanned(
        self,
        scanned: ScannedTexts,
        ids: Sequence[str],
        metadatas: Sequence[Mapping[str, Any] | None] | None = None,
    ) -> list[str]:
        """Index texts read by :meth:`scan_texts` (of this model and these SAEs); returns ids."""
        texts, ids_list, metas = self._validate_new(scanned.texts, ids, metadatas)
        if not texts:
            return []
        with self._lock:
            self._check_ids_free(ids_list)
            self._commit(scanned, ids_list, metas)
        return ids_list

    def _commit(self, scanned: ScannedTexts, ids: list[str], metas: list[dict[str, Any]]) -> None:
        base = self.corpus.n_positions
        for text, doc_id, meta, tokens in zip(
            scanned.texts, ids, metas, scanned.tokenized, strict=True
        ):
            units = segment(text, tokens.starts, self.config.segment)
            self.corpus.append(doc_id, text, meta, tokens.ends, units)
        n_positions = self.corpus.n_positions
        for f, store in self.key_stores.items():
            for positions, vectors in scanned.keys[f]:
                store.append(positions + base, vectors)
            store.flush(n_positions)
        for f, postings in self.postings.items():
            for positions, latent_ids, acts in scanned.codes[f]:
                postings.append(positions + base, latent_ids, acts)
            postings.flush()
        self.bm25.invalidate()

    def _validate_new(
        self,
        texts: Sequence[str],
        ids: Sequence[str] | None,
        metadatas: Sequence[Mapping[str, Any] | None] | None,
    ) -> tuple[list[str], list[str], list[dict[str, Any]]]:
        if isinstance(texts, str):
            raise TypeError("add_documents takes a list of texts; wrap a single text in [ ]")
        texts = list(texts)
        for i, text in enumerate(texts):
            if not isinstance(text, str):
                raise TypeError(f"texts[{i}] is {type(text).__name__}, not str")
            _check_encodable(text, f"texts[{i}]")
        if isinstance(ids, str):
            raise TypeError("ids must be a list of strings; wrap a single id in [ ]")
        if ids is None:
            ids_list = [uuid.uuid4().hex for _ in texts]
        else:
            ids = list(ids)
            if len(ids) != len(texts):
                raise ValueError(f"got {len(texts)} texts but {len(ids)} ids")
            for i, doc_id in enumerate(ids):
                # None would silently become the id "None"; an empty id makes hit ids ambiguous.
                if doc_id is None or doc_id == "":
                    raise ValueError(f"ids[{i}] is {doc_id!r}; every document needs a non-empty id")
                _check_id_type(doc_id, f"ids[{i}]")
                _check_encodable(doc_id, f"ids[{i}]")
            ids_list = list(ids)
        if len(set(ids_list)) != len(ids_list):
            raise ValueError("ids contain duplicates; every document needs its own id")
        self._check_ids_free(ids_list)
        if metadatas is not None and len(metadatas) != len(texts):
            raise ValueError(f"got {len(texts)} texts but {len(metadatas)} metadatas")
        metas = [
            check_metadata(m, doc_id)
            for m, doc_id in zip(metadatas or [None] * len(texts), ids_list, strict=True)
        ]
        return texts, ids_list, metas

    def _check_ids_free(self, ids: Sequence[str]) -> None:
        existing = set(self.corpus.doc_ids)
        clash = [i for i in ids if i in existing]
        if clash:
            raise ValueError(
                f"ids already indexed: {clash[:5]}; delete them first to replace those documents"
            )

    def delete(self, ids: Sequence[str]) -> int:
        """Remove documents by id; returns how many were removed (unknown ids are ignored)."""
        if isinstance(ids, str):
            ids = [ids]
        ids = list(ids)
        for i, doc_id in enumerate(ids):
            _check_id_type(doc_id, f"ids[{i}]")
        with self._lock:
            rows_by_id = self.corpus.row_of()
            rows = {rows_by_id[i] for i in ids if i in rows_by_id}
            if not rows:
                return 0
            keep = self.corpus.delete_rows(rows)
            for store in self.key_stores.values():
                store.keep(keep)
            for postings in self.postings.values():
                postings.keep(keep)
            self.bm25.invalidate()
            return len(rows)

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self.corpus)

    @property
    def doc_ids(self) -> list[str]:
        return list(self.corpus.doc_ids)

    def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        token_budget: int = 1024,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
    ) -> list[Hit]:
        """Evidence spans for ``query`` within ``token_budget`` model tokens, in document order.

        Args:
            query: the question. Empty or whitespace-only gives ``[]``.
            top_k: keep at most this many spans (the best-scoring ones); ``None`` keeps all that
                fit the budget. Values above the number of spans are clamped.
            token_budget: total model tokens of the returned spans.
            mode: ``hybrid`` (S3 + BM25), ``s3`` (S3-Pure) or ``bm25``.
            filters: metadata filters (see :mod:`s3_retriever.filters`), applied before ranking.
        """
        top_k, token_budget = check_query(query, top_k, token_budget, mode)
        if not query.strip() or top_k == 0:
            return []
        with self._lock:
            if self.corpus.n_units == 0:
                return []
            doc_mask = document_mask(self.corpus.metadatas, self.corpus.doc_ids, filters)
            unit_mask = doc_mask[self.corpus.unit_doc]
            if not unit_mask.any():
                return []
            components = self._component_scores(query, mode, doc_mask)
            ranking, ranked_score = self._rank(components, mode, unit_mask, token_budget)
            return self._pack_hits(ranking, ranked_score, components, token_budget, top_k)

    def score_positions(self, query: str, doc_mask: np.ndarray | None = None) -> np.ndarray:
        """Raw S3 score of every indexed token position for ``query`` (before smoothing)."""
        with self._lock:
            return self.score_question_vectors(self.question_vectors(query), doc_mask)

    def score_question_vectors(
        self,
        head_queries: Mapping[tuple[int, int], np.ndarray],
        doc_mask: np.ndarray | None = None,
        row_lse: Mapping[tuple[int, int], np.ndarray] | None = None,
    ) -> np.ndarray:
        """:meth:`score_positions` for question vectors already computed (the index search
        alone, without the question's forward pass).

        ``row_lse`` gives every question row's softmax normaliser over a larger corpus that this
        index is one shard of (see :meth:`question_logsumexp`); the scores are then this shard's
        part of that corpus's scores.
        """
        with self._lock:
            return score_positions(head_queries, *self._scoring_inputs(doc_mask), row_lse)

    def question_logsumexp(
        self,
        head_queries: Mapping[tuple[int, int], np.ndarray],
        doc_mask: np.ndarray | None = None,
    ) -> dict[tuple[int, int], np.ndarray]:
        """Per head, each question row's softmax normaliser over this index's candidate
        positions (log-sum-exp): what shards of one corpus combine before scoring."""
        with self._lock:
            return position_logsumexp(head_queries, *self._scoring_inputs(doc_mask))

    def _scoring_inputs(
        self, doc_mask: np.ndarray | None
    ) -> tuple[
        ScoringConfig,
        int,
        int,
        dict[Field, KeyStore],
        dict[Field, Postings],
        SAEBundle,
        np.ndarray | None,
    ]:
        """The index arguments of the scorers, after the question: settings, stores, mask."""
        allowed = None
        if doc_mask is not None and not doc_mask.all():
            allowed = np.repeat(doc_mask, self.corpus.doc_token_count)
        return (
            self.config.scoring,
            self.corpus.n_positions,
            self.kv_group,
            self.key_stores,
            self.postings,
            self.bundle,
            allowed,
        )

    def _projected_queries(self, text: str, input_ids: np.ndarray) -> dict[int, Any]:
        """The model's query projections of ``text``, remembered for the last few questions.

        RAG apps and evaluations ask the same question at several budgets and modes; the
        question's forward pass is most of a query's time on a small index.
        """
        cached = self._query_cache.get(text)
        if cached is None:
            cached = self.scanner.project_queries(input_ids)
            with self._lock:
                self._query_cache[text] = cached
                while len(self._query_cache) > _QUERY_CACHE_SIZE:
                    self._query_cache.popitem(last=False)
        return cached

    def question_vectors(self, query: str) -> dict[tuple[int, int], np.ndarray]:
        """Pre-RoPE query vectors of the question for every retrieval head."""
        text = self.config.query_template.format(question=query)
        tokens = tokenize(self.loaded.tokenizer, text)
        if len(tokens) == 0:
            return {}
        per_layer = self._projected_queries(text, tokens.input_ids)
        # A question longer than one chunk is read by its last chunk only.
        first = len(tokens) - next(iter(per_layer.values())).shape[0]
        keep = np.arange(len(tokens) - first)
        if self.config.scoring.query_tokens == "content":
            content = content_token_indices(text, tokens.starts, tokens.ends)
            content = content[content >= first] - first
            if len(content):
                keep = content
        return {
            (layer, head): per_layer[layer][keep, head, :].numpy() for layer, head in self.heads
        }

    def _component_scores(
        self, query: str, mode: str, doc_mask: np.ndarray
    ) -> dict[str, np.ndarray]:
        components: dict[str, np.ndarray] = {}
        if mode in ("s3", "hybrid"):
            self._require_scorer_data()
            raw = self.score_positions(query, doc_mask)
            smoothed = smooth(raw, self.corpus, self.config.spans.smooth_width)
            components["s3_positions"] = smoothed
            components["s3"] = unit_scores(smoothed, self.corpus)
        if mode in ("bm25", "hybrid"):
            if not self.bm25.ready:
                self.bm25.build([self.corpus.unit_text(u) for u in range(self.corpus.n_units)])
            components["bm25"] = self.bm25.scores(query)
        return components

    def _require_scorer_data(self) -> None:
        scorer = self.config.scoring.scorer
        if scorer == "exact" and not self.config.store_keys:
            raise ValueError("the exact scorer needs store_keys=True when indexing")
        if scorer != "exact" and not self.config.store_postings:
            raise ValueError(f"the {scorer} scorer needs store_postings=True when indexing")

    def _rank(
        self, components: dict[str, np.ndarray], mode: str, unit_mask: np.ndarray, token_budget: int
    ) -> tuple[Iterator[list[int] | Seed], np.ndarray]:
        """Ranked groups of units (each group one grown span) and the score that ranked them.

        Groups are grown lazily: packing stops once the budget is full, so only the units it
        actually examines pay for growth.
        """
        # Growth stops at a quarter of the budget, so about four spans always fit: the needle test
        # found the right peak ranked third, which 128-token spans in a 256 budget would drop.
        min_tokens = min(self.config.spans.min_span_tokens, max(token_budget // 4, 1))
        if mode == "s3":
            scores = components["s3"]
            # Filtered-out positions already scored zero; peaks there are dropped below.
            peaks = peak_units(
                components["s3_positions"], self.corpus, self.config.spans, limit=4096
            )
            peaks = [u for u in peaks if unit_mask[u]]
            order = np.asarray(peaks, dtype=np.int64)
        elif mode == "bm25":
            scores = components["bm25"]
            # Units sharing no term with the query are not evidence; they would only pad.
            order = rank_order(scores, unit_mask & (scores > 0))
        else:
            order, scores = fuse(
                components["s3"], components["bm25"], self.config.hybrid, unit_mask
            )
        counts = self.corpus.unit_token_counts()
        lead = self._lead_tail_groups(unit_mask, counts)
        within = self.config.spans.within_paragraph
        grown = (
            Seed(
                int(u),
                functools.partial(grow, int(u), self.corpus, scores, min_tokens, counts, within),
            )
            for u in order[:4096]
        )
        return itertools.chain(lead, grown), scores

    def _lead_tail_groups(self, unit_mask: np.ndarray, counts: np.ndarray) -> list[list[int]]:
        hybrid = self.config.hybrid
        if hybrid.lead_tokens == 0 and hybrid.tail_tokens == 0:
            return []
        groups: list[list[int]] = []
        for row in range(len(self.corpus)):
            units = np.flatnonzero((self.corpus.unit_doc == row) & unit_mask)
            for budget, seq in ((hybrid.lead_tokens, units), (hybrid.tail_tokens, units[::-1])):
                taken, used = [], 0
                for u in seq.tolist():
                    if used + counts[u] > budget:
                        break
                    taken.append(u)
                    used += int(counts[u])
                if taken:
                    groups.append(sorted(taken))
        return groups

    def _pack_hits(
        self,
        groups: Iterable[list[int] | Seed],
        ranked_score: np.ndarray,
        components: dict[str, np.ndarray],
        token_budget: int,
        top_k: int | None,
    ) -> list[Hit]:
        counts = self.corpus.unit_token_counts()
        chosen = pack(groups, counts, token_budget, self.corpus, max_spans=top_k)
        runs = self._fit_standalone(merge_adjacent(chosen, self.corpus), ranked_score, token_budget)
        hits = []
        for run in runs:
            row = int(self.corpus.unit_doc[run[0]])
            start = int(self.corpus.unit_chars[run[0], 0])
            end = int(self.corpus.unit_chars[run[-1], 1])
            parts = {
                name: float(values[run].max())
                for name, values in components.items()
                if name in ("s3", "bm25")
            }
            hits.append(
                Hit(
                    doc_id=self.corpus.doc_ids[row],
                    start_char=start,
                    end_char=end,
                    text=self.corpus.texts[row][start:end],
                    score=float(ranked_score[run].max()),
                    # A deep copy: changing hit.metadata must not change the index.
                    metadata=copy.deepcopy(self.corpus.metadatas[row]),
                    scores=parts,
                )
            )
        return hits

    def _fit_standalone(
        self, runs: list[list[int]], ranked_score: np.ndarray, token_budget: int
    ) -> list[list[int]]:
        """The runs that fit ``token_budget`` when each run's text is tokenised on its own.

        Packing charges a unit the tokens of the whole document that end inside it; a span's
        text tokenised alone can take a token more at its edges (a word split by the unit
        boundary is re-merged differently), which is the count a user makes. Runs are kept best
        first while that count fits; the rest (rare: 2 sets in about 4,000 went over) are
        dropped, so the budget holds under both counts.
        """
        standalone = [len(tokenize(self.loaded.tokenizer, self._run_text(run))) for run in runs]
        if sum(standalone) <= token_budget:
            return runs
        keep: set[int] = set()
        used = 0
        for i in sorted(range(len(runs)), key=lambda i: -float(ranked_score[runs[i]].max())):
            if used + standalone[i] <= token_budget:
                keep.add(i)
                used += standalone[i]
        return [run for i, run in enumerate(runs) if i in keep]

    def _run_text(self, run: list[int]) -> str:
        row = int(self.corpus.unit_doc[run[0]])
        start = int(self.corpus.unit_chars[run[0], 0])
        end = int(self.corpus.unit_chars[run[-1], 1])
        return self.corpus.texts[row][start:end]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike[str]) -> None:
        """Write the index to a versioned directory, atomically (see :mod:`persistence`)."""
        from s3_retriever.persistence import save_index

        with self._lock:
            save_index(self, Path(path))

    @classmethod
    def load(
        cls,
        path: str | os.PathLike[str],
        model_path: str | os.PathLike[str] | None = None,
        *,
        device: str = "cpu",
        dtype: str | None = None,
    ) -> S3Retriever:
        """Load an index saved by :meth:`save`; refuses one built by another model or SAEs.

        ``dtype`` defaults to the precision the index was built with.
        """
        from s3_retriever.persistence import load_index

        return load_index(Path(path), model_path=model_path, device=device, dtype=dtype)

    def index_nbytes(self) -> dict[str, int]:
        """Bytes held by each store: postings, keys and the token/unit tables."""
        corpus = self.corpus
        return {
            "postings": sum(p.nbytes for p in self.postings.values()),
            "keys": sum(s.nbytes for s in self.key_stores.values()),
            "tables": int(
                corpus.unit_tokens.nbytes + corpus.unit_chars.nbytes + corpus.unit_doc.nbytes
            ),
        }


def check_query(query: Any, top_k: Any, token_budget: Any, mode: Any) -> tuple[int | None, int]:
    """Check :meth:`S3Retriever.retrieve`'s arguments; returns ``(top_k, token_budget)``."""
    if not isinstance(query, str):
        raise TypeError(f"query must be a str, got {type(query).__name__}")
    _check_encodable(query, "query")
    if mode not in MODES:
        raise ValueError(f"mode must be one of {', '.join(MODES)}; got {mode!r}")
    if top_k is not None:
        top_k = _whole_number(top_k, "top_k")
        if top_k < 0:
            raise ValueError(f"top_k must be None or >= 0, got {top_k}")
    token_budget = _whole_number(token_budget, "token_budget")
    if token_budget < 1:
        raise ValueError(f"token_budget must be at least 1, got {token_budget}")
    return top_k, token_budget


def _check_encodable(text: str, what: str) -> None:
    """Refuse unpaired surrogates (bytes decoded with ``errors="surrogateescape"``): the tokenizer
    cannot encode them, and no offset into such a string maps back to the source file."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"{what} holds an unpaired surrogate at character {exc.start} (invalid UTF-8 in the "
            f"source); decode the source with errors='replace' or fix its encoding first"
        ) from None


def _check_id_type(doc_id: Any, what: str) -> None:
    """Ids are str: 5 or b"x" would become "5" or "b'x'", and then delete([5]) or a doc_id filter
    of 5 would match nothing."""
    if not isinstance(doc_id, str):
        raise TypeError(f"{what} is {type(doc_id).__name__} ({doc_id!r}); ids must be str")


def _whole_number(value: Any, what: str) -> int:
    """``value`` as an int; floats and bools are refused rather than silently truncated."""
    if isinstance(value, bool):
        raise TypeError(f"{what} must be an int, got bool")
    try:
        return operator.index(value)
    except TypeError:
        raise TypeError(f"{what} must be an int, got {type(value).__name__}") from None


def _warn_untrained_fields(bundle: SAEBundle, fields: Sequence[Field], n_kv: int) -> None:
    """Warn when a field's KV head is not among those its layer's key SAE was trained on."""
    trained_on = bundle.info.get("key_kv_heads") or {}
    untrained = [
        (layer, kv) for layer, kv in fields if kv not in bundle.trained_kv_heads(layer, n_kv)
    ]
    if untrained:
        warnings.warn(
            f"KV heads {untrained} (layer, KV head) are encoded by SAEs trained on other heads "
            f"({trained_on}): retrieval through the SAE will be poor there. Use retrieval heads "
            f"that read the trained KV heads, or train SAEs with --key-heads all.",
            stacklevel=3,
        )


def _fallback_heads(n_layers: int, n_heads: int) -> tuple[tuple[int, int], ...]:
    # With no measured choice for a model, every query head of one early layer: METHOD.md found
    # retrieval concentrated in the first third of the network.
    layer = max(1, n_layers // 6)
    return tuple((layer, head) for head in range(n_heads))
