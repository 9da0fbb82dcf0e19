"""Per-question diagnosis of S3-Hybrid against the dense baseline on HotpotQA haystacks.

For every question it records where each gold passage ranks among the haystack's passages under
each signal (S3 attention, BM25, their fusion, MiniLM cosine), how much of it each method covers
at each budget, and the evidence recall of any number of hybrid setting variants, so a gap in
the mean tables can be traced to the signal, the fusion or the span packing that causes it.

    python scripts/diagnose_hybrid.py --task hotpotqa-9k --skip 300 --n 30 \
        --variant hybrid.rrf_k=20 --variant spans.min_span_tokens=64 \
        --out docs/results/diagnose_hotpotqa_9k.json

Index-time settings (``--set retrieval_heads=...``) apply to the whole run. Indexes and dense
embeddings are cached under ``--cache`` (default ``runs/diagnose_cache``) so reruns with other
variants only pay for the queries.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import pickle
import re
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from s3_retriever import S3Retriever
from s3_retriever.config import RetrieverConfig
from s3_retriever.eval.baselines import DenseBaseline
from s3_retriever.eval.data import EvalExample
from s3_retriever.eval.harness import TASKS, apply_override
from s3_retriever.eval.methods import EngineIndex
from s3_retriever.eval.metrics import evidence_recall
from s3_retriever.search.fusion import fuse
from s3_retriever.search.spans import position_units
from s3_retriever.search.units import bm25_components, s3_components

_PASSAGE_HEADER = re.compile(r"Passage \d+:\n")


def passage_bounds(text: str) -> np.ndarray:
    """(start_char, end_char) of every ``Passage i:`` block of a HotpotQA haystack."""
    starts = [m.start() for m in _PASSAGE_HEADER.finditer(text)]
    ends = starts[1:] + [len(text)]
    return np.asarray(list(zip(starts, ends, strict=True)), dtype=np.int64).reshape(-1, 2)


def passage_of(char_starts: np.ndarray, bounds: np.ndarray) -> np.ndarray:
    """Passage index of each unit, from the unit's first character."""
    return np.searchsorted(bounds[:, 0], char_starts, side="right") - 1


def passage_ranks(unit_scores: np.ndarray, unit_passage: np.ndarray, n_passages: int) -> np.ndarray:
    """Rank (0 = best) of every passage by its best unit's score; ties count against it."""
    best = np.full(n_passages, -np.inf)
    np.maximum.at(best, unit_passage, unit_scores.astype(np.float64))
    return np.asarray([(best > b).sum() for b in best], dtype=np.int64)


def coverage(ranges: Sequence[tuple[int, int, int]], gold: tuple[int, int, int]) -> float:
    """Share of one gold range's characters covered by ``ranges``."""
    return evidence_recall(list(ranges), [gold])


def _cache_key(*parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:20]


def engine_for(
    template: S3Retriever, config: RetrieverConfig, example: EvalExample, cache: Path
) -> EngineIndex:
    """The example's S3 index, scanned once and then read back from ``cache``."""
    index_part = {
        k: v for k, v in config.to_dict().items() if k not in ("scoring", "spans", "hybrid")
    }
    path = cache / f"s3_{_cache_key(example.qid, index_part, template.bundle.checksum)}.pkl"
    if path.is_file():
        engine = EngineIndex.__new__(EngineIndex)
        engine.retriever = S3Retriever(template.model, template.bundle, config)
        stored = pickle.loads(path.read_bytes())
        engine.retriever.index.corpus = stored["corpus"]
        engine.retriever.index.key_stores = stored["key_stores"]
        engine.retriever.index.postings = stored["postings"]
        engine.doc_ids = stored["doc_ids"]
        engine._rows = {d: i for i, d in enumerate(engine.doc_ids)}
        return engine
    engine = EngineIndex(template, config, example.documents)
    r = engine.retriever
    payload = {
        "corpus": r.index.corpus,
        "key_stores": r.index.key_stores,
        "postings": r.index.postings,
        "doc_ids": engine.doc_ids,
    }
    path.write_bytes(pickle.dumps(payload))
    return engine


def dense_for(dense: DenseBaseline, example: EvalExample, cache: Path) -> DenseBaseline:
    """The dense baseline over the example, embeddings read back from ``cache`` when present."""
    path = cache / f"dense_{_cache_key(example.qid)}.pkl"
    dense.clear()
    if path.is_file():
        dense._store, dense._embeddings = pickle.loads(path.read_bytes())
        dense._load()
        return dense
    dense.add_documents(example.documents)
    path.write_bytes(pickle.dumps((dense._store, dense._embeddings)))
    return dense


def diagnose_question(
    example: EvalExample,
    engine: EngineIndex,
    dense: DenseBaseline,
    variants: list[tuple[str, RetrieverConfig]],
    budgets: list[int],
    count_tokens: Any,
) -> dict[str, Any]:
    text = example.documents[0]
    bounds = passage_bounds(text)
    n_passages = len(bounds)
    retriever = engine.retriever
    corpus = retriever.index.corpus
    question = example.question
    # Attention mass on the gold passages: does the softmax spread it over more distractors?
    raw = retriever.score_positions(question)
    components = {
        **s3_components(raw, retriever.index, retriever.config.spans),
        **bm25_components(question, retriever.index),
    }
    unit_passage = passage_of(corpus.unit_chars[:, 0], bounds)
    _, fused = fuse(components["s3"], components["bm25"], retriever.config.hybrid)
    dense_scores = dense.scores(question)
    dense_units = np.asarray([u[1] for u in dense.store.units], dtype=np.int64)
    dense_passage = passage_of(dense_units, bounds)
    ranks = {
        "s3": passage_ranks(components["s3"], unit_passage, n_passages),
        "bm25": passage_ranks(components["bm25"], unit_passage, n_passages),
        "fused": passage_ranks(fused, unit_passage, n_passages),
        "dense": passage_ranks(dense_scores, dense_passage, n_passages),
    }
    owner = position_units(corpus)
    position_passage = np.where(owner >= 0, unit_passage[owner], 0)

    gold_passages = [int(passage_of(np.asarray([g[1]]), bounds)[0]) for g in example.gold]
    record: dict[str, Any] = {
        "qid": example.qid,
        "n_passages": n_passages,
        "tokens": int(corpus.n_positions),
        "gold": [],
        "recall": {},
    }
    for g, passage in zip(example.gold, gold_passages, strict=True):
        record["gold"].append(
            {
                "passage": passage,
                "tokens": count_tokens(text[g[1] : g[2]]),
                "rank": {name: int(r[passage]) for name, r in ranks.items()},
            }
        )
    mass = np.bincount(position_passage, weights=raw, minlength=n_passages)
    record["s3_mass_on_gold"] = float(mass[gold_passages].sum() / max(mass.sum(), 1e-12))

    def pieces_ranges(pieces: Sequence[Any]) -> list[tuple[int, int, int]]:
        return [(p.doc, p.start, p.end) for p in pieces]

    methods: dict[str, Any] = {}
    for budget in budgets:
        hits = dense.retrieve(question, budget, count_tokens)
        methods.setdefault("dense", {})[str(budget)] = [(0, h.start_char, h.end_char) for h in hits]
        for label, config in variants:
            pieces = engine.retrieve(
                question, budget, "hybrid", config.scoring.scorer, config=config
            )
            methods.setdefault(label, {})[str(budget)] = pieces_ranges(pieces)
        s3 = engine.retrieve(question, budget, "s3", "exact", config=variants[0][1])
        methods.setdefault("s3", {})[str(budget)] = pieces_ranges(s3)
    for method, by_budget in methods.items():
        record["recall"][method] = {}
        for budget, ranges in by_budget.items():
            passages_touched = sorted(
                {
                    int(p)
                    for r in ranges
                    for p in range(
                        int(passage_of(np.asarray([r[1]]), bounds)[0]),
                        int(passage_of(np.asarray([max(r[2] - 1, r[1])]), bounds)[0]) + 1,
                    )
                }
            )
            record["recall"][method][budget] = {
                "evidence_recall": evidence_recall(ranges, example.gold),
                "per_gold": [coverage(ranges, g) for g in example.gold],
                "spans": len(ranges),
                "passages_touched": len(passages_touched),
            }
    return record


def summarise(
    records: list[dict[str, Any]], labels: list[str], budgets: list[int]
) -> dict[str, Any]:
    """Mean recall per method, gold passage ranks per signal, and how each method fills 1,024."""
    methods = ["dense", "s3", *labels]
    out: dict[str, Any] = {"mean_recall": {}, "gold_rank": {}, "at_1024": {}}
    for method in methods:
        out["mean_recall"][method] = {
            str(b): float(
                np.mean([r["recall"][method][str(b)]["evidence_recall"] for r in records])
            )
            for b in budgets
        }
    for signal in ("s3", "bm25", "fused", "dense"):
        ranks = np.asarray([g["rank"][signal] for r in records for g in r["gold"]])
        out["gold_rank"][signal] = {
            "median": float(np.median(ranks)),
            "mean": float(ranks.mean()),
            "top3": float((ranks < 3).mean()),
            "top5": float((ranks < 5).mean()),
            "top10": float((ranks < 10).mean()),
        }
    if 1024 not in budgets:
        return out
    dense = [r["recall"]["dense"]["1024"]["evidence_recall"] for r in records]
    for method in methods:
        cells = [r["recall"][method]["1024"] for r in records]
        recall = [c["evidence_recall"] for c in cells]
        out["at_1024"][method] = {
            "questions_above_dense": int(
                sum(a > b + 1e-9 for a, b in zip(recall, dense, strict=True))
            ),
            "questions_below_dense": int(
                sum(b > a + 1e-9 for a, b in zip(recall, dense, strict=True))
            ),
            "gold_passages_half_covered": float(
                np.mean([share >= 0.5 for c in cells for share in c["per_gold"]])
            ),
            "both_gold_half_covered": float(np.mean([min(c["per_gold"]) >= 0.5 for c in cells])),
            "spans": float(np.mean([c["spans"] for c in cells])),
            "passages_touched": float(np.mean([c["passages_touched"] for c in cells])),
        }
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--task", default="hotpotqa-9k", choices=("hotpotqa-3k", "hotpotqa-9k"))
    parser.add_argument("--skip", type=int, default=300)
    parser.add_argument("--n", type=int, default=30)
    parser.add_argument("--budgets", default="512,1024,2048")
    parser.add_argument("--set", action="append", default=[], help="section.field=value for all")
    parser.add_argument(
        "--variant",
        action="append",
        default=[],
        help="hybrid variant: assignments joined by '+', e.g. hybrid.rrf_k=20+spans.smooth_width=7",
    )
    parser.add_argument("--cache", default="runs/diagnose_cache")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)

    budgets = [int(b) for b in args.budgets.split(",")]
    # Question ids repeat across haystack sizes, so each task keeps its own cache.
    cache = Path(args.cache) / args.task
    cache.mkdir(parents=True, exist_ok=True)
    template = S3Retriever.from_pretrained()
    base = template.config.replace(
        scan=template.config.scan.__class__(
            **{**template.config.scan.__dict__, "show_progress": False}
        )
    )
    for assignment in args.set:
        base = apply_override(base, assignment)
    variants = [("hybrid", base)]
    for spec in args.variant:
        config = base
        for assignment in spec.split("+"):
            config = apply_override(config, assignment)
        variants.append((f"hybrid[{spec}]", config))
    tokenizer = template.model.tokenizer

    def count_tokens(text: str) -> int:
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    examples = TASKS[args.task](Path(args.data), args.n, args.skip)
    dense = DenseBaseline()
    records = []
    for i, example in enumerate(examples):
        engine = engine_for(template, base, example, cache)
        dense_for(dense, example, cache)
        records.append(diagnose_question(example, engine, dense, variants, budgets, count_tokens))
        print(f"{i + 1}/{len(examples)}", file=sys.stderr, flush=True)
    labels = [label for label, _ in variants]
    report = {
        "command": "python scripts/diagnose_hybrid.py "
        + " ".join(sys.argv[1:] if argv is None else argv),
        "task": args.task,
        "skip": args.skip,
        "n": len(examples),
        "retrieval_heads": [
            list(h) for h in S3Retriever(template.model, template.bundle, base).heads
        ],
        "summary": summarise(records, labels, budgets),
        "questions": records,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["summary"], indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
