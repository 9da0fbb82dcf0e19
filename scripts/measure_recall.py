"""Evidence recall of every engine method on HotpotQA haystacks, at matched token budgets.

Each haystack (one question's paragraphs padded with other questions' paragraphs to about
``--words`` words) is indexed once; every method then retrieves at each budget and the share of
gold-passage characters covered is recorded.

    python scripts/measure_recall.py --data ../shared/data --n 60 --words 3000 \
        --budgets 256,512,1024 --out docs/results/recall_hotpotqa_3k.json
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import time
from pathlib import Path

import numpy as np

from s3_retriever import RetrieverConfig, S3Retriever, ScanConfig, ScoringConfig
from s3_retriever.eval.data import load_hotpotqa_haystacks
from s3_retriever.eval.metrics import evidence_recall, full_support

METHODS = {
    "s3:exact": ("s3", "exact"),
    "s3:aligned": ("s3", "aligned"),
    "s3:coactivation": ("s3", "coactivation"),
    "hybrid:exact": ("hybrid", "exact"),
    "hybrid:aligned": ("hybrid", "aligned"),
    "hybrid:coactivation": ("hybrid", "coactivation"),
    "bm25": ("bm25", "exact"),
}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--skip", type=int, default=0)
    parser.add_argument("--words", type=int, default=3000)
    parser.add_argument("--budgets", default="256,512,1024")
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument("--out", default="runs/recall.json")
    parser.add_argument("--sae", default=None, help="SAE bundle (default: the shipped one)")
    parser.add_argument("--atoms", type=int, default=None, help="aligned: atoms per query token")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    methods = args.methods.split(",")
    quiet = RetrieverConfig(scan=ScanConfig(show_progress=False))
    retriever = S3Retriever.from_pretrained(sae_path=args.sae, config=quiet)
    examples = load_hotpotqa_haystacks(
        args.data, n_questions=args.n, target_words=args.words, skip=args.skip
    )
    recall: dict[str, dict[int, list[float]]] = {m: {b: [] for b in budgets} for m in methods}
    support: dict[str, dict[int, list[float]]] = {m: {b: [] for b in budgets} for m in methods}
    latency: dict[str, list[float]] = {m: [] for m in methods}
    index_seconds, n_tokens = [], []
    base_search = retriever.config.search_settings()
    for example in examples:
        retriever.delete(retriever.doc_ids)
        started = time.perf_counter()
        retriever.add_documents(example.documents, ids=example.doc_ids)
        index_seconds.append(time.perf_counter() - started)
        n_tokens.append(retriever.index.corpus.n_positions)
        for method in methods:
            mode, scorer = METHODS[method]
            scoring = ScoringConfig(scorer=scorer)
            if args.atoms:
                scoring = ScoringConfig(scorer=scorer, atoms_per_query=args.atoms)
            search = dataclasses.replace(base_search, scoring=scoring)
            for budget in budgets:
                started = time.perf_counter()
                hits = retriever.retrieve(
                    example.question, token_budget=budget, mode=mode, search=search
                )
                latency[method].append(time.perf_counter() - started)
                rows = {doc_id: i for i, doc_id in enumerate(example.doc_ids)}
                ranges = [(rows[h.doc_id], h.start_char, h.end_char) for h in hits]
                recall[method][budget].append(evidence_recall(ranges, example.gold))
                support[method][budget].append(float(full_support(ranges, example.gold)))
    table = {
        m: {
            str(b): {
                "evidence_recall": float(np.mean(recall[m][b])),
                "full_support": float(np.mean(support[m][b])),
            }
            for b in budgets
        }
        for m in methods
    }
    report = {
        "date": datetime.date.today().isoformat(),
        "command": "python scripts/measure_recall.py "
        + " ".join(f"--{k} {v}" for k, v in vars(args).items()),
        "model": retriever.model.model_id,
        "heads": [list(h) for h in retriever.heads],
        "n_questions": len(examples),
        "mean_tokens_per_haystack": float(np.mean(n_tokens)),
        "index_seconds_per_haystack": float(np.mean(index_seconds)),
        "query_seconds": {m: float(np.mean(v)) for m, v in latency.items()},
        "results": table,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(report, indent=1))
    lines = [
        f"{len(examples)} HotpotQA haystacks (questions {args.skip}-{args.skip + len(examples) - 1}"
        f", ~{args.words} words, mean {np.mean(n_tokens):.0f} tokens), {report['date']}",
        "",
        "| method | "
        + " | ".join(f"recall@{b}" for b in budgets)
        + f" | full support@{budgets[-1]} | query ms |",
        "|---|" + "---|" * (len(budgets) + 2),
    ]
    for m in methods:
        cells = " | ".join(f"{table[m][str(b)]['evidence_recall']:.3f}" for b in budgets)
        full = table[m][str(budgets[-1])]["full_support"]
        lines.append(f"| {m} | {cells} | {full:.3f} | {1000 * report['query_seconds'][m]:.0f} |")
    lines += ["", f"Reproduce: `{report['command']}`", ""]
    Path(args.out).with_suffix(".md").write_text("\n".join(lines))
    print(f"{len(examples)} haystacks, {np.mean(n_tokens):.0f} tokens each")
    print("method".ljust(22) + "".join(f"R@{b}".rjust(9) for b in budgets) + "  full@max")
    for m in methods:
        cells = "".join(f"{table[m][str(b)]['evidence_recall']:9.3f}" for b in budgets)
        print(m.ljust(22) + cells + f"{table[m][str(budgets[-1])]['full_support']:9.3f}")


if __name__ == "__main__":
    main()
