"""The retrieval methods the harness compares, behind one small interface.

Every method indexes one example's documents, then returns character ranges that fit a token
budget counted with the scanned model's tokenizer, so all methods are charged the same way.

- ``s3:<scorer>`` and ``hybrid:<scorer>``: the engine, S3-Pure and S3-Hybrid, with any scorer.
  All of them share one index per document set (the scan is the expensive part).
- ``bm25``, ``dense`` (all-MiniLM-L6-v2) and ``bm25+dense`` (reciprocal-rank fusion, what
  LangChain's EnsembleRetriever does) rank the same sentence-bounded units of at most 60 words.
- ``full``: the whole context, middle-truncated to the budget (the long-context baseline).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

from s3_retriever.config import RetrieverConfig
from s3_retriever.eval.baselines import BM25Baseline, DenseBaseline, RRFBaseline
from s3_retriever.retriever import Mode, S3Retriever
from s3_retriever.search.settings import SCORERS, ScorerName

__all__ = [
    "BASELINE_METHODS",
    "Retrieved",
    "engine_method",
    "middle_truncate",
    "parse_methods",
]

BASELINE_METHODS: tuple[str, ...] = ("bm25", "dense", "bm25+dense", "full")
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


def parse_methods(spec: str) -> list[str]:
    """Split and check a comma-separated method list, with a message listing the valid names."""
    names = [name.strip() for name in spec.split(",") if name.strip()]
    valid = [f"{m}:{s}" for m in ENGINE_MODES for s in SCORERS] + list(BASELINE_METHODS)
    unknown = [name for name in names if name not in valid]
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
    settings fixed at construction (heads, scan, BM25 parameters) take effect.
    """

    def __init__(
        self, template: S3Retriever, config: RetrieverConfig, documents: Sequence[str]
    ) -> None:
        self.retriever = S3Retriever(template.model, template.bundle, config)
        self.doc_ids = [f"d{i}" for i in range(len(documents))]
        self.retriever.add_documents(list(documents), ids=self.doc_ids)
        self._rows = {doc_id: row for row, doc_id in enumerate(self.doc_ids)}

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
    """The unit-ranking baselines and the full-context truncation over one example."""

    def __init__(
        self,
        methods: Sequence[str],
        documents: Sequence[str],
        count_tokens: Callable[[str], int],
        tokenize_offsets: Callable[[str], list[tuple[int, int]]],
        dense: DenseBaseline | None,
    ) -> None:
        self.documents = list(documents)
        self.count_tokens = count_tokens
        self.tokenize_offsets = tokenize_offsets
        self.rankers: dict[str, BM25Baseline | DenseBaseline | RRFBaseline] = {}
        bm25 = BM25Baseline() if {"bm25", "bm25+dense"} & set(methods) else None
        if {"dense", "bm25+dense"} & set(methods) and dense is None:
            raise ValueError("the dense baseline needs a DenseBaseline instance")
        if bm25 is not None:
            bm25.add_documents(self.documents)
            self.rankers["bm25"] = bm25
        if dense is not None and {"dense", "bm25+dense"} & set(methods):
            dense.clear()
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
