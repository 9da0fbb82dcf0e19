"""End-to-end behaviour of S3Retriever on the tiny model: spans, budgets, validation, updates."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
import torch

from s3_retriever import Hit, S3Retriever, SAEError, ScanConfig, ScoringConfig
from s3_retriever.index.postings import dequantize_activations, quantize_activations
from s3_retriever.model.loading import LoadedModel, decoder_layers
from s3_retriever.model.scan import Scanner, tokenize
from s3_retriever.retriever import Mode
from s3_retriever.search.fusion import HybridConfig
from s3_retriever.search.settings import ScorerName
from s3_retriever.search.through_sae import coactivation_scores
from tests.conftest import (
    HEAD_DIM,
    N_HEADS,
    RetrieverFactory,
    hit_tokens,
    one_thread,
    tiny_config,
)

MODES: tuple[Mode, ...] = ("hybrid", "s3", "bm25")
SCORERS: tuple[ScorerName, ...] = ("exact", "aligned", "coactivation")
QUESTIONS = (
    "When does the train leave the mountain station?",
    "How many nurses will the hospital hire?",
    "Which countries does the Amazon basin cover?",
    "東京 office 😀 emoji",
)


def _add(
    retriever: S3Retriever, corpus: dict[str, str], order: list[str], meta: Any = None
) -> None:
    retriever.add_documents(
        [corpus[i] for i in order],
        ids=order,
        metadatas=[meta[i] for i in order] if meta else None,
    )


def _by_id(hits: list[Hit]) -> dict[str, float]:
    return {hit.id: hit.score for hit in hits}


def _assert_same_hits(a: list[Hit], b: list[Hit], tol: float = 1e-5) -> None:
    assert [h.id for h in a] == [h.id for h in b]
    for x, y in zip(a, b, strict=True):
        assert x.text == y.text
        assert x.score == pytest.approx(y.score, abs=tol)
        assert x.scores.keys() == y.scores.keys()
        for name in x.scores:
            assert x.scores[name] == pytest.approx(y.scores[name], abs=tol)


def check_hits(
    retriever: S3Retriever, hits: list[Hit], source: dict[str, str], budget: int, mode: Mode
) -> None:
    """Invariants every result list must satisfy."""
    order = retriever.index.corpus.doc_ids
    assert len({h.id for h in hits}) == len(hits)
    keys = [(order.index(h.doc_id), h.start_char) for h in hits]
    assert keys == sorted(keys), "hits are not in document order"
    for hit in hits:
        assert hit.text == source[hit.doc_id][hit.start_char : hit.end_char]
        assert hit.text and hit.text == hit.text.strip()
        assert hit.id == f"{hit.doc_id}:{hit.start_char}:{hit.end_char}"
        expected_parts = {"hybrid": {"s3", "bm25"}, "s3": {"s3"}, "bm25": {"bm25"}}[mode]
        assert set(hit.scores) == expected_parts
        assert np.isfinite(hit.score)
    for a, b in zip(hits, hits[1:], strict=False):
        if a.doc_id == b.doc_id:
            assert a.end_char <= b.start_char, "hits overlap"
    assert sum(hit_tokens(retriever, h) for h in hits) <= budget


@pytest.fixture(scope="module")
def by_scorer(
    make_retriever: RetrieverFactory,
    corpus: dict[str, str],
    corpus_metadata: dict[str, dict[str, Any]],
) -> dict[str, S3Retriever]:
    """One indexed retriever per scorer over the whole corpus."""
    out: dict[str, S3Retriever] = {}
    for scorer in SCORERS:
        retriever = make_retriever(scoring=ScoringConfig(scorer=scorer, atoms_per_query=8))
        with one_thread():
            _add(retriever, corpus, list(corpus), corpus_metadata)
        out[scorer] = retriever
    return out


# ---------------------------------------------------------------------------------- results


MODE_SCORERS = [(mode, scorer) for mode in ("hybrid", "s3") for scorer in SCORERS] + [
    ("bm25", "exact")
]


@pytest.mark.parametrize(("mode", "scorer"), MODE_SCORERS)
@pytest.mark.parametrize("budget", [1, 9, 40, 150, 100_000])
def test_hits_are_exact_ordered_and_within_budget(
    by_scorer: dict[str, S3Retriever],
    corpus: dict[str, str],
    scorer: ScorerName,
    mode: Mode,
    budget: int,
) -> None:
    """Every hit is source[start:end], hits are in document order, unique, and fit the budget."""
    retriever = by_scorer[scorer]
    for question in QUESTIONS:
        hits = retriever.retrieve(question, token_budget=budget, mode=mode)
        check_hits(retriever, hits, corpus, budget, mode)
        if budget >= 40:
            assert hits, (mode, question)


def test_hits_carry_document_metadata(
    indexed: S3Retriever, corpus_metadata: dict[str, Any]
) -> None:
    """Each hit carries a copy of its document's metadata."""
    hits = indexed.retrieve(QUESTIONS[0], token_budget=300)
    assert hits
    for hit in hits:
        assert hit.metadata == corpus_metadata[hit.doc_id]
    hits[0].metadata["topic"] = "changed"
    assert indexed.retrieve(QUESTIONS[0], token_budget=300)[0].metadata["topic"] != "changed"


def test_bm25_mode_ranks_the_matching_sentence(indexed: S3Retriever) -> None:
    """With a budget for one span, BM25 picks the sentence sharing the question's rare words."""
    hits = indexed.retrieve(
        "Which plan adds forty beds to the emergency ward?", token_budget=100, mode="bm25"
    )
    best = max(hits, key=lambda h: h.score)
    assert best.doc_id == "hospital"
    assert "forty beds" in best.text
    assert best.scores["bm25"] == best.score > 0


def test_retrieve_is_deterministic(indexed: S3Retriever) -> None:
    """The same question twice gives identical hits."""
    for mode in MODES:
        first = indexed.retrieve(QUESTIONS[1], token_budget=120, mode=mode)
        second = indexed.retrieve(QUESTIONS[1], token_budget=120, mode=mode)
        assert first == second


@pytest.mark.parametrize("mode", MODES)
def test_top_k_limits_spans(indexed: S3Retriever, corpus: dict[str, str], mode: Mode) -> None:
    """top_k caps the number of spans, keeps the best one, and a huge top_k changes nothing."""
    full = indexed.retrieve(QUESTIONS[2], token_budget=150, mode=mode)
    assert len(full) >= 2
    best = max(h.score for h in full)
    for k in range(1, len(full)):
        top = indexed.retrieve(QUESTIONS[2], token_budget=150, mode=mode, top_k=k)
        assert 1 <= len(top) <= k
        check_hits(indexed, top, corpus, 150, mode)
        assert max(h.score for h in top) == pytest.approx(best)
    huge = indexed.retrieve(QUESTIONS[2], token_budget=150, mode=mode, top_k=10**9)
    assert huge == full
    exact = indexed.retrieve(QUESTIONS[2], token_budget=150, mode=mode, top_k=len(full))
    assert exact == full


def test_top_k_zero_and_negative(indexed: S3Retriever) -> None:
    """top_k=0 gives [], a negative top_k is refused."""
    assert indexed.retrieve(QUESTIONS[0], top_k=0) == []
    with pytest.raises(ValueError, match="top_k"):
        indexed.retrieve(QUESTIONS[0], top_k=-1)


@pytest.mark.parametrize("budget", [0, -5])
def test_token_budget_below_one_is_refused(indexed: S3Retriever, budget: int) -> None:
    """token_budget < 1 raises ValueError."""
    with pytest.raises(ValueError, match="token_budget"):
        indexed.retrieve(QUESTIONS[0], token_budget=budget)


@pytest.mark.parametrize("query", ["", "   ", "\n\t\x0b"])
def test_empty_query_gives_no_hits(indexed: S3Retriever, query: str) -> None:
    """Empty or whitespace-only questions give []."""
    for mode in MODES:
        assert indexed.retrieve(query, mode=mode) == []


def test_bad_query_and_mode_are_refused(indexed: S3Retriever) -> None:
    """A non-str question raises TypeError, an unknown mode ValueError."""
    with pytest.raises(TypeError):
        indexed.retrieve(b"bytes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="mode"):
        indexed.retrieve("question", mode="dense")  # type: ignore[arg-type]


def test_empty_corpus_gives_no_hits(make_retriever: RetrieverFactory) -> None:
    """A retriever with no documents (or only blank ones) returns [] in every mode."""
    retriever = make_retriever()
    for mode in MODES:
        assert retriever.retrieve(QUESTIONS[0], mode=mode) == []
    assert retriever.add_documents([]) == []
    retriever.add_documents(["", "   \n\t "], ids=["empty", "blank"])
    assert len(retriever) == 2
    for mode in MODES:
        assert retriever.retrieve(QUESTIONS[0], mode=mode) == []


def test_blank_documents_beside_real_ones(
    make_retriever: RetrieverFactory, corpus: dict[str, str]
) -> None:
    """Blank documents between real ones never produce hits and do not break scoring."""
    retriever = make_retriever()
    retriever.add_documents(
        ["", corpus["trains"], "  \n\n  ", corpus["rivers"]], ids=["e", "trains", "b", "rivers"]
    )
    for mode in MODES:
        hits = retriever.retrieve(QUESTIONS[0], token_budget=200, mode=mode)
        assert hits
        assert {h.doc_id for h in hits} <= {"trains", "rivers"}
        check_hits(retriever, hits, {**corpus, "e": "", "b": "  \n\n  "}, 200, mode)


def test_lead_tokens_always_include_document_starts(
    make_retriever: RetrieverFactory, corpus: dict[str, str]
) -> None:
    """hybrid.lead_tokens puts the first unit of every document into the result."""
    retriever = make_retriever(hybrid=HybridConfig(lead_tokens=60))
    _add(retriever, corpus, list(corpus))
    hits = retriever.retrieve("nurses", token_budget=2000)
    starts = {(h.doc_id, h.start_char) for h in hits}
    for row, doc_id in enumerate(retriever.index.corpus.doc_ids):
        first_unit = np.flatnonzero(retriever.index.corpus.unit_doc == row)[0]
        assert (doc_id, int(retriever.index.corpus.unit_chars[first_unit, 0])) in starts


# ---------------------------------------------------------------------------------- validation


@pytest.fixture()
def small(make_retriever: RetrieverFactory) -> S3Retriever:
    retriever = make_retriever()
    retriever.add_documents(["The fox jumps over the dog."], ids=["a"], metadatas=[{"k": 1}])
    return retriever


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"texts": ["x", "y"], "ids": ["d", "d"]}, ValueError, "duplicates"),
        ({"texts": ["x"], "ids": ["a"]}, ValueError, "already indexed"),
        ({"texts": ["x", "y"], "ids": ["only-one"]}, ValueError, "ids"),
        ({"texts": ["x"], "ids": ["m"], "metadatas": [{"when": object()}]}, TypeError, "JSON"),
        ({"texts": ["x"], "ids": ["m"], "metadatas": [{"s": {1, 2}}]}, TypeError, "JSON"),
        ({"texts": ["x"], "ids": ["m"], "metadatas": ["not a dict"]}, TypeError, "dict"),
        ({"texts": ["x"], "ids": ["m"], "metadatas": [{}, {}]}, ValueError, "metadatas"),
        ({"texts": ["x", 3], "ids": ["m", "n"]}, TypeError, "texts\\[1\\]"),
        ({"texts": [b"bytes"], "ids": ["m"]}, TypeError, "str"),
        ({"texts": "a bare string"}, TypeError, "list"),
    ],
)
def test_add_documents_validation(
    small: S3Retriever, kwargs: dict[str, Any], error: type[Exception], match: str
) -> None:
    """Bad ids, metadata or texts are refused and leave the index unchanged."""
    before = (small.doc_ids, small.index.corpus.n_positions, small.index.corpus.n_units)
    with pytest.raises(error, match=match):
        small.add_documents(**kwargs)
    assert (small.doc_ids, small.index.corpus.n_positions, small.index.corpus.n_units) == before


def test_add_documents_assigns_unique_ids(small: S3Retriever) -> None:
    """Without ids, every document gets its own fresh id, returned in order."""
    ids = small.add_documents(["one sentence.", "two sentences here."])
    assert len(ids) == 2 and len(set(ids)) == 2
    assert small.doc_ids[-2:] == ids
    # Ids are str: 7 used to become "7", which delete([7]) then never matched.
    with pytest.raises(TypeError, match="ids must be str"):
        small.add_documents(["third."], ids=[7])  # type: ignore[list-item]


def test_failed_scan_commits_nothing(small: S3Retriever, monkeypatch: pytest.MonkeyPatch) -> None:
    """A scan interrupted part-way leaves documents, keys and postings as they were."""
    before_keys = {f: s.codes.copy() for f, s in small.index.key_stores.items()}
    real_scan = small.scanner.scan_batches

    def failing(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for i, captured in enumerate(real_scan(*args, **kwargs)):
            if i == 2:
                raise KeyboardInterrupt
            yield captured

    monkeypatch.setattr(small.scanner, "scan_batches", failing)
    with pytest.raises(KeyboardInterrupt):
        small.add_documents(["word " * 200, "more words here. " * 20], ids=["big", "other"])
    assert small.doc_ids == ["a"]
    for f, store in small.index.key_stores.items():
        store.flush(small.index.corpus.n_positions)
        assert np.array_equal(store.codes, before_keys[f])
    for postings in small.index.postings.values():
        assert postings.indptr[-1] == small.index.corpus.n_positions * postings_k(small)


def test_concurrent_adds_of_one_id_keep_ids_unique(
    small: S3Retriever, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two threads adding the same id: one succeeds, the other is refused; ids stay unique."""
    import s3_retriever.index.scanned as retriever_module  # where add_documents tokenizes

    real_tokenize = retriever_module.tokenize_many
    first_inside = threading.Event()
    second_done = threading.Event()
    first_thread: list[threading.Thread] = []

    def slow_tokenize(tokenizer: Any, texts: Any) -> Any:
        if first_thread and threading.current_thread() is first_thread[0]:
            first_inside.set()
            second_done.wait(timeout=10)
        return real_tokenize(tokenizer, texts)

    monkeypatch.setattr(retriever_module, "tokenize_many", slow_tokenize)
    errors: list[BaseException] = []

    def add_first() -> None:
        try:
            small.add_documents(["First writer's text."], ids=["same"])
        except ValueError as exc:
            errors.append(exc)

    thread = threading.Thread(target=add_first)
    first_thread.append(thread)
    thread.start()
    assert first_inside.wait(timeout=10)
    try:
        small.add_documents(["Second writer's text."], ids=["same"])
    except ValueError as exc:
        errors.append(exc)
    finally:
        second_done.set()
        thread.join(timeout=10)
    assert len(errors) == 1
    assert small.doc_ids.count("same") == 1


def postings_k(retriever: S3Retriever) -> int:
    return next(iter(retriever.bundle.saes.values())).config.k


def test_constructor_checks_heads(loaded: LoadedModel, bundle: Any) -> None:
    """Unknown heads raise ValueError; heads on layers without SAEs need store_postings=False."""
    with pytest.raises(ValueError, match="does not exist"):
        S3Retriever(loaded, bundle, tiny_config(retrieval_heads=((9, 0),)))
    with pytest.raises(ValueError, match="does not exist"):
        S3Retriever(loaded, bundle, tiny_config(retrieval_heads=((1, N_HEADS),)))
    with pytest.raises(SAEError, match="layer"):
        S3Retriever(loaded, bundle, tiny_config(retrieval_heads=((3, 0),)))
    keys_only = S3Retriever(
        loaded, bundle, tiny_config(retrieval_heads=((3, 0),), store_postings=False)
    )
    keys_only.add_documents(["The train leaves at seven."], ids=["t"])
    assert keys_only.retrieve("train", mode="s3")
    aligned = S3Retriever(
        loaded,
        bundle,
        tiny_config(
            retrieval_heads=((3, 0),), store_postings=False, scoring=ScoringConfig(scorer="aligned")
        ),
    )
    aligned.add_documents(["The train leaves at seven."], ids=["t"])
    with pytest.raises(ValueError, match="store_postings"):
        aligned.retrieve("train", mode="s3")


# ---------------------------------------------------------------------------------- filters


def test_filters_restrict_hits(by_scorer: dict[str, S3Retriever]) -> None:
    """Hits only come from documents whose metadata (or id) matches every filter."""
    retriever = by_scorer["exact"]
    cases: list[tuple[dict[str, Any], set[str]]] = [
        ({"topic": "city"}, {"hospital", "trains"}),
        ({"doc_id": "rivers"}, {"rivers"}),
        ({"year": [2021, 2024]}, {"rivers", "unicode"}),
        ({"topic": "city", "year": 2023}, {"trains"}),
    ]
    for filters, allowed in cases:
        for mode in MODES:
            hits = retriever.retrieve(QUESTIONS[1], token_budget=500, mode=mode, filters=filters)
            # BM25 returns only units sharing a term with the question, possibly none.
            assert hits or mode == "bm25", (filters, mode)
            assert {h.doc_id for h in hits} <= allowed
    for mode in MODES:
        assert retriever.retrieve(QUESTIONS[1], mode=mode, filters={"topic": "none"}) == []
        assert retriever.retrieve(QUESTIONS[1], mode=mode, filters={"missing": 1}) == []
    with pytest.raises(TypeError):
        retriever.retrieve(QUESTIONS[1], filters=[("topic", "city")])  # type: ignore[arg-type]


@pytest.mark.parametrize("scorer", SCORERS)
def test_filters_apply_before_ranking(
    make_retriever: RetrieverFactory,
    by_scorer: dict[str, S3Retriever],
    corpus: dict[str, str],
    corpus_metadata: dict[str, Any],
    scorer: ScorerName,
) -> None:
    """A filtered query scores as if only the matching documents were indexed (S3 mode)."""
    full = by_scorer[scorer]
    subset = make_retriever(scoring=ScoringConfig(scorer=scorer, atoms_per_query=8))
    _add(subset, corpus, ["hospital", "trains"], corpus_metadata)
    mask = np.array([m["topic"] == "city" for m in full.index.corpus.metadatas])
    question = QUESTIONS[0]
    scores = full.score_positions(question, mask)
    allowed = np.repeat(mask, full.index.corpus.doc_token_count)
    assert np.all(scores[~allowed] == 0)
    assert scores[allowed].sum() == pytest.approx(1.0, abs=1e-4)
    if scorer == "coactivation":
        # idf counts every indexed position, so each head's filtered distribution is its
        # unfiltered one restricted to the matching documents and renormalised.
        n = full.index.corpus.n_positions
        expected = np.zeros(n)
        for (layer, head), q in full.question_vectors(question).items():
            field = (layer, head // full.kv_group)
            raw = coactivation_scores(q, full.bundle.saes[layer], full.index.postings[field], n)
            restricted = np.where(allowed, raw, 0.0)
            expected += restricted / restricted.sum()
        expected /= len(full.heads)
        np.testing.assert_allclose(scores, expected, rtol=1e-4, atol=1e-8)
        return
    np.testing.assert_allclose(
        scores[allowed], subset.score_positions(question), rtol=1e-4, atol=1e-7
    )
    _assert_same_hits(
        full.retrieve(question, token_budget=150, mode="s3", filters={"topic": "city"}),
        subset.retrieve(question, token_budget=150, mode="s3"),
    )


# ---------------------------------------------------------------------------------- updates


@pytest.mark.parametrize("scorer", SCORERS)
def test_delete_equals_fresh_index(
    make_retriever: RetrieverFactory,
    corpus: dict[str, str],
    corpus_metadata: dict[str, Any],
    scorer: ScorerName,
) -> None:
    """delete(ids) then retrieve gives the hits and scores of an index built without them."""
    config = {"scoring": ScoringConfig(scorer=scorer, atoms_per_query=8)}
    edited = make_retriever(**config)
    _add(edited, corpus, list(corpus), corpus_metadata)
    assert edited.delete(["hospital", "no-such-id"]) == 1
    assert edited.delete("hospital") == 0
    fresh = make_retriever(**config)
    kept = [d for d in corpus if d != "hospital"]
    _add(fresh, corpus, kept, corpus_metadata)
    assert edited.doc_ids == fresh.doc_ids == kept
    _assert_same_index(edited, fresh)


def _assert_same_index(edited: S3Retriever, fresh: S3Retriever) -> None:
    """Same tables, position scores and hits (every mode) for every test question."""
    assert edited.index.corpus.n_positions == fresh.index.corpus.n_positions
    np.testing.assert_array_equal(edited.index.corpus.unit_tokens, fresh.index.corpus.unit_tokens)
    np.testing.assert_array_equal(edited.index.corpus.unit_chars, fresh.index.corpus.unit_chars)
    for question in QUESTIONS:
        np.testing.assert_allclose(
            edited.score_positions(question), fresh.score_positions(question), rtol=1e-4, atol=1e-7
        )
        for mode in MODES:
            _assert_same_hits(
                edited.retrieve(question, token_budget=120, mode=mode),
                fresh.retrieve(question, token_budget=120, mode=mode),
            )


def test_delete_then_readd(make_retriever: RetrieverFactory, corpus: dict[str, str]) -> None:
    """A deleted id can be added again; deleting everything empties the results."""
    retriever = make_retriever()
    _add(retriever, corpus, ["rivers", "trains"])
    assert retriever.delete("rivers") == 1
    assert all(h.doc_id == "trains" for h in retriever.retrieve("Amazon river", token_budget=500))
    retriever.add_documents([corpus["rivers"]], ids=["rivers"])
    assert retriever.doc_ids == ["trains", "rivers"]
    assert any(h.doc_id == "rivers" for h in retriever.retrieve("Amazon river", mode="bm25"))
    assert retriever.delete(["trains", "rivers"]) == 2
    assert len(retriever) == 0
    assert retriever.retrieve("Amazon river") == []


@pytest.mark.parametrize("scorer", SCORERS)
def test_replace_equals_delete_then_add(
    make_retriever: RetrieverFactory, corpus: dict[str, str], scorer: ScorerName
) -> None:
    """add_documents(replace=True) replaces indexed ids (and adds new ones) in one step: the
    index equals one where the old documents were deleted and the new ones added."""
    config = {"scoring": ScoringConfig(scorer=scorer, atoms_per_query=8)}
    upserted = make_retriever(**config)
    _add(upserted, corpus, ["rivers", "hospital", "trains"])
    with pytest.raises(ValueError, match="replace=True"):
        upserted.add_documents([corpus["unicode"]], ids=["hospital"])
    ids = ["hospital", "unicode"]
    texts = [corpus["unicode"], corpus["hospital"]]  # hospital gets another text; unicode is new
    metas = [{"v": 2}, {"v": 1}]
    assert upserted.add_documents(texts, ids=ids, metadatas=metas, replace=True) == ids
    expected = make_retriever(**config)
    _add(expected, corpus, ["rivers", "hospital", "trains"])
    expected.delete(["hospital"])
    expected.add_documents(texts, ids=ids, metadatas=metas)
    assert upserted.doc_ids == expected.doc_ids == ["rivers", "trains", "hospital", "unicode"]
    _assert_same_index(upserted, expected)
    replaced = upserted.retrieve(QUESTIONS[0], mode="s3", filters={"doc_id": "hospital"})
    assert replaced and all(h.metadata == {"v": 2} for h in replaced)
    assert all(corpus["unicode"][h.start_char : h.end_char] == h.text for h in replaced)


def test_incremental_adds_equal_one_batch(
    make_retriever: RetrieverFactory, corpus: dict[str, str]
) -> None:
    """Adding documents one call at a time gives the same index as one call."""
    together = make_retriever()
    _add(together, corpus, list(corpus))
    apart = make_retriever()
    for doc_id in corpus:
        _add(apart, corpus, [doc_id])
    np.testing.assert_array_equal(apart.index.corpus.unit_tokens, together.index.corpus.unit_tokens)
    for question in QUESTIONS:
        np.testing.assert_allclose(
            apart.score_positions(question),
            together.score_positions(question),
            rtol=1e-4,
            atol=1e-7,
        )


@pytest.mark.parametrize("scorer", SCORERS)
def test_results_independent_of_insertion_order(
    make_retriever: RetrieverFactory, corpus: dict[str, str], scorer: ScorerName
) -> None:
    """Per-document position scores, unit scores and S3 hits do not depend on document order."""
    config = {"scoring": ScoringConfig(scorer=scorer, atoms_per_query=8)}
    forward, backward = make_retriever(**config), make_retriever(**config)
    order = list(corpus)
    _add(forward, corpus, order)
    _add(backward, corpus, order[::-1])

    def per_doc(retriever: S3Retriever, scores: np.ndarray) -> dict[str, np.ndarray]:
        c = retriever.index.corpus
        return {
            d: scores[c.doc_token_start[r] : c.doc_token_start[r] + c.doc_token_count[r]]
            for r, d in enumerate(c.doc_ids)
        }

    for question in QUESTIONS:
        a = per_doc(forward, forward.score_positions(question))
        b = per_doc(backward, backward.score_positions(question))
        for doc_id in order:
            np.testing.assert_allclose(a[doc_id], b[doc_id], rtol=1e-4, atol=1e-7)
        assert _by_id(forward.retrieve(question, token_budget=100, mode="s3")) == pytest.approx(
            _by_id(backward.retrieve(question, token_budget=100, mode="s3")), abs=1e-5
        )
        bm25 = {
            forward.index.corpus.unit_text(u): s
            for u, s in enumerate(forward.index.bm25_scores(question))
        }
        bm25_back = {
            backward.index.corpus.unit_text(u): s
            for u, s in enumerate(backward.index.bm25_scores(question))
        }
        assert bm25 == pytest.approx(bm25_back, abs=1e-5)


def _scanned_keys(retriever: S3Retriever, texts: list[str]) -> dict[int, np.ndarray]:
    """Float keys of every indexed position, layer -> (positions, kv heads, head_dim)."""
    docs = [tokenize(retriever.model.tokenizer, t) for t in texts]
    bases = np.concatenate([[0], np.cumsum([len(d) for d in docs])])
    out = {layer: np.zeros((int(bases[-1]), 2, HEAD_DIM), np.float32) for layer in (1, 2)}
    for capture in retriever.scanner.scan(docs):
        first = int(bases[capture.doc_index]) + capture.token_start
        for layer, keys in capture.keys.items():
            out[layer][first : first + keys.shape[0]] = keys.numpy()
    return out


def test_key_maps_are_applied_to_indexed_keys(loaded: LoadedModel, corpus: dict[str, str]) -> None:
    """With SAE key maps, aligned scores equal attention of A^-1 q on reconstructions of A k."""
    from tests.conftest import make_bundle

    bundle = make_bundle(loaded.model_id, seed=9)
    maps = {}
    for layer in (1, 2):
        m = torch.randn(HEAD_DIM, HEAD_DIM, generator=torch.Generator().manual_seed(layer))
        maps[layer] = (m @ m.T / HEAD_DIM + 0.5 * torch.eye(HEAD_DIM)).float()
    bundle.key_maps = maps
    n_latents = bundle.saes[1].config.n_latents
    retriever = S3Retriever(
        loaded,
        bundle,
        tiny_config(
            scoring=ScoringConfig(scorer="aligned", atoms_per_query=n_latents, center_queries=False)
        ),
    )
    texts = [corpus["trains"], corpus["rivers"]]
    retriever.add_documents(texts, ids=["trains", "rivers"])
    keys = _scanned_keys(retriever, texts)
    question = QUESTIONS[0]
    expected = np.zeros(retriever.index.corpus.n_positions)
    for (layer, head), q in retriever.question_vectors(question).items():
        sae = bundle.saes[layer]
        mapped = keys[layer][:, head // retriever.kv_group] @ maps[layer].numpy()
        with torch.no_grad():
            ids, acts = sae.encode(torch.from_numpy(mapped))
            stored = dequantize_activations(quantize_activations(acts.numpy()))
            recon = sae.decode(ids, torch.from_numpy(stored)) - sae.b_dec
        dual = q.astype(np.float64) @ np.linalg.inv(maps[layer].double().numpy())
        logits = dual @ recon.double().numpy().T / np.sqrt(HEAD_DIM)
        weights = np.exp(logits - logits.max(axis=1, keepdims=True))
        expected += (weights / weights.sum(axis=1, keepdims=True)).mean(axis=0)
    expected /= len(retriever.heads)
    # Stored activations are quantised on a log grid; a float difference between the batched
    # encoder and this reference can move one activation across a grid step (seen: 1 of 475
    # positions off by 0.12%), hence rtol 2e-3 rather than 1e-3.
    np.testing.assert_allclose(retriever.score_positions(question), expected, rtol=2e-3, atol=1e-7)


# ---------------------------------------------------------------------------------- scanning


class _Forbidden(RuntimeError):
    pass


def _forbid(module: torch.nn.Module) -> Any:
    def hook(*_args: Any) -> None:
        raise _Forbidden(f"{type(module).__name__} should not run")

    return module.register_forward_pre_hook(hook)


def test_scan_stops_after_deepest_projection(
    make_retriever: RetrieverFactory, loaded: LoadedModel, corpus: dict[str, str]
) -> None:
    """Layers after the deepest retrieval layer, and the rest of that layer, never run (the
    model's own hooked forward; the lean CPU pass copies weights only up to those projections)."""
    layers = decoder_layers(loaded.model)
    deepest = layers[2]
    handles = [
        _forbid(layers[3]),
        _forbid(deepest.mlp),
        _forbid(deepest.self_attn.v_proj),
        _forbid(deepest.self_attn.o_proj),
        _forbid(loaded.model.lm_head),
    ]
    try:
        hooked = ScanConfig(chunk_size=32, batch_size=2, show_progress=False, fused_forward=False)
        retriever = make_retriever(scan=hooked)
        _add(retriever, corpus, ["trains", "unicode"])
        assert retriever.retrieve(QUESTIONS[0], token_budget=60, mode="s3")
        handles.append(_forbid(deepest.self_attn.k_proj))
        vectors = retriever.question_vectors(QUESTIONS[0])
        assert set(vectors) == {(1, 0), (2, 3)}
    finally:
        for handle in handles:
            handle.remove()
    for layer in layers:
        for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj):
            assert not proj._forward_hooks, "scanner hooks were left behind"


def test_forbidden_hook_does_fire(loaded: LoadedModel, tokenizer: Any) -> None:
    """The guard used above really fires when a forbidden layer runs."""
    layers = decoder_layers(loaded.model)
    scanner = Scanner(
        loaded.model, [3], [], ScanConfig(chunk_size=16, show_progress=False, fused_forward=False)
    )
    handle = _forbid(layers[2])
    try:
        with pytest.raises(_Forbidden):
            list(scanner.scan([tokenize(tokenizer, "The train leaves at seven.")]))
    finally:
        handle.remove()


def _reference_keys(loaded: LoadedModel, ids: np.ndarray, bos: int, layer: int) -> torch.Tensor:
    captured: dict[str, torch.Tensor] = {}
    proj = decoder_layers(loaded.model)[layer].self_attn.k_proj
    handle = proj.register_forward_hook(lambda _m, _i, out: captured.__setitem__("k", out))
    try:
        batch = torch.tensor([[bos, *ids.tolist()]])
        with torch.inference_mode():
            loaded.model(input_ids=batch)
    finally:
        handle.remove()
    return captured["k"][0, 1:].reshape(len(ids), -1, HEAD_DIM).float()


def test_scan_chunks_are_independent_and_unpadded(
    loaded: LoadedModel, corpus: dict[str, str]
) -> None:
    """Each chunk's keys equal a lone forward pass of BOS + that chunk, whatever its batch."""
    tok = loaded.tokenizer
    docs = [
        tokenize(tok, corpus["trains"]),
        tokenize(tok, corpus["unicode"]),
        tokenize(tok, "Short one."),
    ]
    scanner = Scanner(
        loaded.model,
        [1, 2],
        [],
        ScanConfig(chunk_size=24, batch_size=3, show_progress=False),
        bos_token_id=tok.bos_token_id,
    )
    seen = {d: 0 for d in range(len(docs))}
    for capture in scanner.scan(docs):
        doc = docs[capture.doc_index]
        ids = doc.input_ids[capture.token_start : capture.token_start + 24]
        assert capture.keys[1].shape == (len(ids), 2, HEAD_DIM)
        for layer in (1, 2):
            want = _reference_keys(loaded, ids, tok.bos_token_id, layer)
            torch.testing.assert_close(capture.keys[layer], want, atol=1e-5, rtol=1e-4)
        seen[capture.doc_index] += len(ids)
    assert seen == {d: len(doc) for d, doc in enumerate(docs)}


@pytest.mark.parametrize("chunk_size", [8, 13, 4096])
def test_chunk_size_keeps_every_token(
    make_retriever: RetrieverFactory, corpus: dict[str, str], chunk_size: int
) -> None:
    """Any chunk size scans every token once: same token count, every key and posting filled."""
    retriever = make_retriever(
        scan=ScanConfig(chunk_size=chunk_size, batch_size=2, show_progress=False)
    )
    _add(retriever, corpus, list(corpus))
    expected = sum(len(tokenize(retriever.model.tokenizer, t)) for t in corpus.values())
    assert retriever.index.corpus.n_positions == expected
    for store in retriever.index.key_stores.values():
        assert store.codes.shape == (expected, HEAD_DIM)
        assert np.all(store.scales > 0)
    for postings in retriever.index.postings.values():
        assert postings.indptr[-1] == expected * postings_k(retriever)
        assert np.array_equal(np.unique(postings.decode()[0]), np.arange(expected))
    assert retriever.retrieve(QUESTIONS[0], token_budget=80)


def test_project_queries_shape(loaded: LoadedModel, tokenizer: Any) -> None:
    """project_queries returns (tokens, query heads, head_dim) per query layer, last chunk only."""
    scanner = Scanner(
        loaded.model,
        [1],
        [1, 2],
        ScanConfig(chunk_size=8, show_progress=False),
        bos_token_id=tokenizer.bos_token_id,
    )
    short = tokenize(tokenizer, "Where?").input_ids
    out = scanner.project_queries(short)
    assert set(out) == {1, 2}
    for tensor in out.values():
        assert tensor.shape == (len(short), N_HEADS, HEAD_DIM)
        assert tensor.dtype == torch.float32
    long = tokenize(tokenizer, "When does the small train leave the mountain station?").input_ids
    assert len(long) > 8
    out_long = scanner.project_queries(long)
    assert out_long[2].shape == (8, N_HEADS, HEAD_DIM)
    torch.testing.assert_close(out_long[2], scanner.project_queries(long[-8:])[2])
    with pytest.raises(ValueError, match="query layers"):
        Scanner(loaded.model, [1], []).project_queries(short)
    with pytest.raises(ValueError, match="does not exist"):
        Scanner(loaded.model, [7], [])


def test_scan_config_validation() -> None:
    """chunk_size < 8 and batch_size < 1 are refused."""
    with pytest.raises(ValueError):
        ScanConfig(chunk_size=7)
    with pytest.raises(ValueError):
        ScanConfig(batch_size=0)
