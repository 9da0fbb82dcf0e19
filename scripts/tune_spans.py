"""Grid over span and fusion settings on tuning haystacks, indexing each haystack only once.

All haystacks go into one index; each question is answered with a ``doc_id`` filter, which
restricts the softmax and BM25 statistics to its own haystack (same as a separate index).
Uses tuning questions (default 300-339), never the evaluation questions.

    python scripts/tune_spans.py --data ../shared/data --skip 300 --n 40 --out runs/tune.json
"""

from __future__ import annotations

import argparse
import itertools
import json
from pathlib import Path

import numpy as np

from s3_retriever import (
    HybridConfig,
    RetrieverConfig,
    S3Retriever,
    ScanConfig,
    ScoringConfig,
    SearchSettings,
    SpanConfig,
)
from s3_retriever.eval.data import load_hotpotqa_haystacks
from s3_retriever.eval.metrics import evidence_recall


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--skip", type=int, default=300)
    parser.add_argument("--n", type=int, default=40)
    parser.add_argument("--budgets", default="512,1024")
    parser.add_argument("--smooth", default="5,15,31")
    parser.add_argument("--grow", default="24,64,128")
    parser.add_argument("--s3-weight", default="1,2")
    parser.add_argument("--scorer", default="exact")
    parser.add_argument("--query-tokens", default="all,content")
    parser.add_argument("--modes", default="s3,hybrid,bm25")
    parser.add_argument("--atoms", default="64", help="aligned scorer: atoms per question token")
    parser.add_argument("--sae", default=None)
    parser.add_argument("--out", default="runs/tune.json")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    quiet = RetrieverConfig(scan=ScanConfig(show_progress=False))
    retriever = S3Retriever.from_pretrained(sae_path=args.sae, config=quiet)
    examples = load_hotpotqa_haystacks(args.data, n_questions=args.n, skip=args.skip)
    retriever.add_documents([e.documents[0] for e in examples], ids=[e.qid for e in examples])
    base = retriever.config
    rows = []
    for smooth_width, grow_tokens, s3_weight, query_tokens, atoms in itertools.product(
        [int(x) for x in args.smooth.split(",")],
        [int(x) for x in args.grow.split(",")],
        [float(x) for x in args.s3_weight.split(",")],
        args.query_tokens.split(","),
        [int(x) for x in args.atoms.split(",")],
    ):
        search = SearchSettings(
            query_template=base.query_template,
            spans=SpanConfig(smooth_width=smooth_width, min_span_tokens=grow_tokens),
            hybrid=HybridConfig(s3_weight=s3_weight),
            scoring=ScoringConfig(
                scorer=args.scorer, query_tokens=query_tokens, atoms_per_query=atoms
            ),  # type: ignore[arg-type]
        )
        result = {
            "smooth": smooth_width,
            "grow": grow_tokens,
            "s3_weight": s3_weight,
            "query_tokens": query_tokens,
            "atoms": atoms,
        }
        for mode in args.modes.split(","):
            if mode != "hybrid" and s3_weight != 1.0:
                continue
            for budget in budgets:
                recalls = []
                for example in examples:
                    hits = retriever.retrieve(
                        example.question,
                        token_budget=budget,
                        mode=mode,
                        filters={"doc_id": example.qid},
                        search=search,
                    )
                    ranges = [(0, h.start_char, h.end_char) for h in hits]
                    recalls.append(evidence_recall(ranges, example.gold))
                result[f"{mode}@{budget}"] = float(np.mean(recalls))
        rows.append(result)
        print(json.dumps(result))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
