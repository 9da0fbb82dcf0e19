"""The retrieval methods the harness compares, behind one small interface.

Every method indexes one example's documents, then returns character ranges that fit a token
budget counted with the scanned model's tokenizer, so all methods are charged the same way.

- ``s3:<scorer>`` and ``hybrid:<scorer>``: the engine, S3-Pure and S3-Hybrid, with any scorer.
  All of them share one index per document set (the scan is the expensive part).
- ``bm25``, ``dense`` (all-MiniLM-L6-v2) and ``bm25+dense`` (reciprocal-rank fusion, what
  LangChain's EnsembleRetriever does) rank the same sentence-bounded units of at most 60 words.
- ``full``: the whole context, middle-truncated to the budget (the long-context baseline).
- ``rerank`` (``rerank:N``): BM25's top N chunks (default 30) re-ranked by the calibrated
  in-context attention of the engine's retrieval heads (:mod:`s3_retriever.eval.rerank`);
  ``rerank-all`` reads every head of every layer instead, as ICR does.

On the corpus and needle tasks the baselines rank fixed 128-token chunks of each document
(:mod:`s3_retriever.eval.chunking`); elsewhere they rank sentence units, as before.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

from s3_retriever.config import RetrieverConfig
from s3_retriever.eval.baselines import BM25Baseline, DenseBaseline, RRFBaseline, Splitter
from s3_retriever.eval.chunking import token_splitter
from s3_retriever.eval.index_cache import cache_key, cached_retriever
from s3_retriever.eval.rerank import DEFAULT_CANDIDATES, AttentionReranker
from s3_retriever.model.loading import LoadedModel, attention_shape
from s3_retriever.retriever import Mode, S3Retriever
from s3_retriever.search.settings import SCORERS, ScorerName

__all__ = [
    "BASELINE_METHODS",
    "RERANK_METHODS",
    "Retrieved",
    "engine_method",
    "middle_truncate",
    "parse_methods",
    "rerank_method",
]

BASELINE_METHODS: tuple[str, ...] = ("bm25", "dense", "bm25+dense", "full")
RERANK_METHODS: tuple[str, ...] = ("rerank", "rerank-all")
ENGINE_MODES: tuple[str, ...] = ("s3", "hybrid")


@dataclass(frozen=True)
class Retrieved:
    """One retrieved piece: ``documents[doc][start:end]`` is ``text``."""

    doc: int
    start: int
    end: int
    text: str


def engine_method(name: str) -> tuple[Mode, ScorerName] | None:
    """``(mode, scorer)`` for an engine method name such as ``hybrid:exact``; None otherwise."""
    mode, _, scorer = name.partition(":")
    if mode in ENGINE_MODES and scorer in SCORERS:
        return cast(Mode, mode), cast(ScorerName, scorer)
    return None


def rerank_method(name: str) -> tuple[bool, int] | None:
    """``(every head, candidates)`` for ``rerank``, ``rerank:N``, ``rerank-all[:N]``; else None."""
    base, sep, count = name.partition(":")
    if base not in RERANK_METHODS:
        return None
    if not sep:
        return base == "rerank-all", DEFAULT_CANDIDATES
    if not count.isdigit() or int(count) < 1:
        raise ValueError(f"{name!r}: the candidate count after ':' must be a positive integer")
    return base == "rerank-all", int(count)


def parse_methods(spec: str) -> list[str]:
    """Split and check a comma-separated method list, with a message listing the valid names."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    valid = [f"{m}:{s}" for m in ENGINE_MODES for s in SCORERS] + list(BASELINE_METHODS)
    valid += [*RERANK_METHODS, "rerank:N", "rerank-all:N"]
    unknown = [name for name in names if name not in valid and rerank_method(name) is None]
    if unknown or not names:
        raise ValueError(f"unknown method(s) {unknown or spec!r}; choose from {', '.join(valid)}")
    return names


def middle_truncate(token_ids: Sequence[int], budget: int) -> tuple[int, int] | None:
    """Token indices ``(head_end, tail_start)`` that keep the first and last ``budget / 2``.

    None when everything fits. The middle is cut because long-context models use the start and
    end of their input best, the convention of LongBench's full-context runs.
    """
    if len(token_ids) <= budget:
        return None
    head = budget // 2
    return head, len(token_ids) - (budget - head)


class EngineIndex:
    """One S3 index over an example's documents, shared by every ``s3:*``/``hybrid:*`` method.

    A fresh retriever over ``template``'s loaded model and SAEs is built with ``config``, so
    settings fixed at construction (heads, scan, BM25 parameters) take effect. With ``cache``
    the index is loaded from, or saved to, that folder under a key of ``index_settings`` and
    the documents (:mod:`s3_retriever.eval.index_cache`).
    """

    def __init__(
        self,
        template: S3Retriever,
        config: RetrieverConfig,
        documents: Sequence[str],
        doc_ids: Sequence[str] | None = None,
        metadatas: Sequence[dict[str, Any]] | None = None,
        cache: Path | None = None,
        index_settings: str = "",
    ) -> None:
        self.doc_ids = list(doc_ids) if doc_ids else [f"d{i}" for i in range(len(documents))]
        if cache is None:
            self.retriever = S3Retriever(template.model, template.bundle, config)
            self.retriever.add_documents(list(documents), ids=self.doc_ids, metadatas=metadatas)
        else:
            key = cache_key(template, index_settings, documents, self.doc_ids, metadatas)
            self.retriever = cached_retriever(
                cache, key, template, config, documents, self.doc_ids, metadatas
            )
        self._rows = {doc_id: row for row, doc_id in enumerate(self.doc_ids)}

    def forget_questions(self) -> None:
        """Drop the retriever's remembered question forward passes, so the next query is timed
        cold (S3-Pure and S3-Hybrid would otherwise share one)."""
        # The retriever keeps no public switch for this; its question encoder holds the memory.
        questions = getattr(self.retriever, "_questions", None)
        remembered = getattr(questions, "_cache", None)
        if remembered is not None:
            remembered.clear()

    def retrieve(
        self,
        question: str,
        budget: int,
        mode: Mode,
        scorer: ScorerName,
        config: RetrieverConfig | None = None,
    ) -> list[Retrieved]:
        """Retrieve with ``scorer`` and the query-time settings of ``config`` (default: own).

        The settings go with the call, so the shared retriever is never changed.
        """
        base = (config or self.retriever.config).search_settings()
        settings = dataclasses.replace(
            base, scoring=dataclasses.replace(base.scoring, scorer=scorer)
        )
        hits = self.retriever.retrieve(question, token_budget=budget, mode=mode, search=settings)
        return [Retrieved(self._rows[h.doc_id], h.start_char, h.end_char, h.text) for h in hits]


class BaselineIndex:
    """The unit-ranking baselines and the full-context truncation over one example.

    ``chunk_tokens`` cuts every document into windows of that many model tokens for all
    rankers (None: sentence units). ``rerank`` methods need ``loaded`` and ``heads``.
    """

    def __init__(
        self,
        methods: Sequence[str],
        documents: Sequence[str],
        count_tokens: Callable[[str], int],
        tokenize_offsets: Callable[[str], list[tuple[int, int]]],
        dense: DenseBaseline | None,
        chunk_tokens: int | None = None,
        loaded: LoadedModel | None = None,
        heads: Sequence[tuple[int, int]] = (),
    ) -> None:
        self.documents = list(documents)
        self.count_tokens = count_tokens
        self.tokenize_offsets = tokenize_offsets
        self.rankers: dict[str, Any] = {}
        splitter: Splitter | None = None
        if chunk_tokens is not None:
            splitter = token_splitter(tokenize_offsets, chunk_tokens)
        rerankers = {m: rerank_method(m) for m in methods if rerank_method(m) is not None}
        needs_bm25 = {"bm25", "bm25+dense"} & set(methods) or rerankers
        bm25 = BM25Baseline(splitter=splitter) if needs_bm25 else None
        if {"dense", "bm25+dense"} & set(methods) and dense is None:
            raise ValueError("the dense baseline needs a DenseBaseline instance")
        if bm25 is not None:
            bm25.add_documents(self.documents)
            self.rankers["bm25"] = bm25
        for method, parsed in rerankers.items():
            if loaded is None or bm25 is None:
                raise ValueError("the rerank methods need the loaded model and its heads")
            every_head, candidates = parsed  # type: ignore[misc]
            chosen = _every_head(loaded) if every_head else list(heads)
            self.rankers[method] = AttentionReranker(loaded, chosen, bm25, candidates)
        if dense is not None and {"dense", "bm25+dense"} & set(methods):
            dense.clear(splitter)
            dense.add_documents(self.documents)
            self.rankers["dense"] = dense
            if "bm25+dense" in methods and bm25 is not None:
                self.rankers["bm25+dense"] = RRFBaseline(bm25, dense)

    def retrieve(self, method: str, question: str, budget: int) -> list[Retrieved]:
        if method == "full":
            return self._full(budget)
        hits = self.rankers[method].retrieve(question, budget, self.count_tokens)
        return [Retrieved(int(h.doc_id), h.start_char, h.end_char, h.text) for h in hits]

    def _full(self, budget: int) -> list[Retrieved]:
        """Concatenated documents, middle-truncated to ``budget`` tokens."""
        pieces: list[tuple[int, int, int]] = []  # (doc, start_char, end_char) per token
        for doc, text in enumerate(self.documents):
            pieces += [(doc, s, e) for s, e in self.tokenize_offsets(text)]
        cut = middle_truncate(range(len(pieces)), budget)
        keep = [pieces] if cut is None else [pieces[: cut[0]], pieces[cut[1] :]]
        out: list[Retrieved] = []
        for run in keep:
            for doc in sorted({p[0] for p in run}):
                in_doc = [p for p in run if p[0] == doc]
                start, end = in_doc[0][1], in_doc[-1][2]
                out.append(Retrieved(doc, start, end, self.documents[doc][start:end]))
        return out


def _every_head(loaded: LoadedModel) -> list[tuple[int, int]]:
    """Every (layer, query head) of the model: ICR's aggregation over all heads."""
    n_layers, n_heads, _, _ = attention_shape(loaded.model)
    return [(layer, head) for layer in range(n_layers) for head in range(n_heads)]
