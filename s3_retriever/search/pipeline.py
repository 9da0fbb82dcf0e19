"""``search``: one question through the whole pipeline, each step one module.

question -> question vectors (:mod:`.question`) -> position scores (:mod:`.scoring`) -> unit
scores (:mod:`.units`) -> relevance and its floor (:mod:`.relevance`) -> ranked groups
(:mod:`.ranking`, with :mod:`.fusion`) -> spans packed under the budget, each span's text
tokenised alone fitting too (:mod:`.spans`) -> hits (:mod:`.hits`). Each step reads only what
the one before it returned, plus the index and the settings.
"""

from __future__ import annotations

import numpy as np

from s3_retriever.index.index import Index
from s3_retriever.model.scan import tokenize
from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.search.filters import Filters, document_mask
from s3_retriever.search.hits import Hit, build_hits
from s3_retriever.search.question import QuestionEncoder
from s3_retriever.search.ranking import rank
from s3_retriever.search.relevance import unit_relevance, warn_fewer_hits
from s3_retriever.search.scoring import (
    require_store,
    score_index,
    score_index_coverage,
    score_index_sparse,
)
from s3_retriever.search.settings import Mode, SearchSettings
from s3_retriever.search.spans import fit_standalone, merge_adjacent, pack
from s3_retriever.search.sparse import SparseScores
from s3_retriever.search.units import Components, bm25_components, s3_components


def search(
    index: Index,
    query: str,
    questions: QuestionEncoder,
    bundle: SAEBundle,
    kv_group: int,
    settings: SearchSettings,
    mode: Mode,
    token_budget: int,
    top_k: int | None,
    filters: Filters | None,
) -> list[Hit]:
    """Evidence spans for a checked, non-empty ``query`` (see :meth:`S3Retriever.retrieve`)."""
    corpus = index.corpus
    if corpus.n_units == 0:
        return []
    doc_mask = document_mask(corpus.metadatas, corpus.doc_ids, filters)
    unit_mask = doc_mask[corpus.unit_doc]
    if not unit_mask.any():
        return []
    components: Components = {}
    if mode in ("s3", "hybrid"):
        require_store(settings.scoring, bool(index.key_stores), bool(index.postings))
        vectors = questions.vectors(query, settings)
        if settings.scoring.pooling == "coverage":
            # Units score directly (.coverage); S3-Pure then ranks units, not position peaks.
            components["s3"] = score_index_coverage(
                index, vectors, settings.scoring, kv_group, bundle, settings.spans, doc_mask
            )
        else:
            # The clustered search reads a few thousand keys per question row: its scores stay
            # sparse, so smoothing and peaks cost what it read, not the corpus (.sparse).
            sparse = score_index_sparse(
                index, vectors, settings.scoring, kv_group, bundle, doc_mask
            )
            raw: np.ndarray | SparseScores = (
                sparse
                if sparse is not None
                else score_index(index, vectors, settings.scoring, kv_group, bundle, doc_mask)
            )
            components.update(s3_components(raw, index, settings.spans, positions=mode == "s3"))
    if mode in ("bm25", "hybrid"):
        components.update(bm25_components(query, index))
    relevance = unit_relevance(components, unit_mask)
    floor = settings.spans.min_relevance
    # Units below the relevance floor start no span: spans without evidence never pad.
    evidence = unit_mask & (relevance >= floor)
    groups, ranked_score = rank(components, mode, evidence, token_budget, corpus, settings)
    counts = corpus.unit_token_counts()
    regions = corpus.unit_regions(settings.spans.within_paragraph)[0]
    chosen = pack(groups, counts, token_budget, corpus, max_spans=top_k, regions=regions)
    runs = fit_standalone(
        merge_adjacent(chosen, corpus),
        corpus,
        ranked_score,
        token_budget,
        lambda text: len(tokenize(questions.tokenizer, text)),
    )
    hits = build_hits(runs, corpus, ranked_score, components, relevance)
    if top_k is not None and len(hits) < top_k:
        documents = (int(doc_mask.sum()), len(doc_mask)) if filters else None
        used = sum(int(counts[run].sum()) for run in runs)
        warn_fewer_hits(len(hits), top_k, used, token_budget, documents, floor)
    return hits
