"""Retrieval through the SAE against exact attention, and postings size against bf16 keys.

For each SAE bundle, the HotpotQA haystacks are indexed once (one index, each question filtered
to its own haystack, as in ``benchmarks/index_size.py``); then S3-Pure retrieves with the
``aligned`` scorer (through the SAE's postings) and the ``exact`` scorer (stored keys) at each
budget. Reported per bundle: evidence recall of both, the ratio aligned / exact at each budget
with the standard error of the paired per-question difference, and the postings' bytes on disk
per token and field against the bf16 keys of the same fields (2 bytes x head_dim).

    python -m scripts.sae_tradeoff --data ../shared/data --skip 300 --n 40 \
        --sae runs/sae_a runs/sae_b --out docs/results/sae_tradeoff_tuning
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.index_size import disk_bytes, index_haystacks
from benchmarks.real_corpus import data_dir, quiet
from s3_retriever import ScoringConfig
from s3_retriever.eval.data import EvalExample, load_hotpotqa_haystacks
from s3_retriever.eval.metrics import evidence_recall
from s3_retriever.retriever import S3Retriever

SCORERS = ("exact", "aligned")


def recall_per_question(
    retriever: S3Retriever, examples: Sequence[EvalExample], scorer: str, budgets: Sequence[int]
) -> dict[int, list[float]]:
    """S3-Pure evidence recall of every question at every budget with ``scorer``."""
    search = dataclasses.replace(
        retriever.config.search_settings(),
        scoring=ScoringConfig(scorer=scorer),  # type: ignore[arg-type]
    )
    found: dict[int, list[float]] = {b: [] for b in budgets}
    for i, example in enumerate(examples):
        for budget in budgets:
            hits = retriever.retrieve(
                example.question,
                token_budget=budget,
                mode="s3",
                filters={"haystack": [i]},
                search=search,
            )
            found[budget].append(
                evidence_recall([(0, h.start_char, h.end_char) for h in hits], example.gold)
            )
    return found


def measure_bundle(
    sae: str | None,
    examples: Sequence[EvalExample],
    budgets: Sequence[int],
    model: str | None = None,
) -> dict[str, Any]:
    """Postings size and recall of one SAE bundle (None: the shipped one) for ``model`` (None:
    the bundled one); the retrieval heads are the bundle's."""
    retriever = quiet(S3Retriever.from_pretrained(model, sae_path=sae))
    index_haystacks(retriever, examples)
    n_tokens = retriever.index.corpus.n_positions
    with tempfile.TemporaryDirectory() as tmp:
        retriever.save(Path(tmp) / "index")
        postings_bytes = disk_bytes(Path(tmp) / "index")["postings"]
    configs = {layer: s.config for layer, s in retriever.bundle.saes.items()}
    head_dim = next(iter(configs.values())).d_in
    n_fields = len(retriever.fields)
    per_field = postings_bytes / n_tokens / n_fields
    recall = {s: recall_per_question(retriever, examples, s, budgets) for s in SCORERS}
    by_budget = {}
    for b in budgets:
        exact, aligned = np.array(recall["exact"][b]), np.array(recall["aligned"][b])
        difference = aligned - exact
        by_budget[str(b)] = {
            "exact": float(exact.mean()),
            "aligned": float(aligned.mean()),
            "aligned_over_exact": float(aligned.mean() / exact.mean()),
            # Standard error of the paired difference, as a share of exact: the noise of the ratio.
            "ratio_standard_error": float(
                difference.std(ddof=1) / np.sqrt(len(difference)) / exact.mean()
            ),
        }
    return {
        "sae": sae or "shipped",
        "model": retriever.model.model_id,
        "layers": {str(layer): c.__dict__ for layer, c in configs.items()},
        "training": retriever.bundle.info.get("command"),
        "key_kv_heads": retriever.bundle.info.get("key_kv_heads"),
        "n_tokens": n_tokens,
        "n_fields": n_fields,
        "postings_bytes_per_token_per_field": per_field,
        "bf16_keys_bytes_per_token_per_field": 2 * head_dim,
        "bf16_keys_over_postings": 2 * head_dim / per_field,
        "recall": by_budget,
        "per_question": {s: {str(b): v for b, v in r.items()} for s, r in recall.items()},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--skip", type=int, default=300, help="first question (300: tuning)")
    parser.add_argument("--n", type=int, default=40, help="questions")
    parser.add_argument("--words", type=int, default=3000, help="words per haystack")
    parser.add_argument("--budgets", default="512,1024,2048")
    parser.add_argument("--sae", nargs="+", required=True, help="SAE bundles; 'shipped' allowed")
    parser.add_argument("--model", default=None, help="model (default: bundled SmolLM2)")
    parser.add_argument("--out", required=True, help="output path stem (.json, .md)")
    args = parser.parse_args()
    budgets = [int(b) for b in args.budgets.split(",")]
    examples = load_hotpotqa_haystacks(
        data_dir(args.data), n_questions=args.n, target_words=args.words, skip=args.skip
    )
    rows = []
    for sae in args.sae:
        bundle = None if sae == "shipped" else sae
        rows.append(measure_bundle(bundle, examples, budgets, args.model))
        print(_line(rows[-1], budgets), flush=True)
    command = "python -m scripts.sae_tradeoff " + " ".join(
        f"--{k} {' '.join(v) if isinstance(v, list) else v}"
        for k, v in vars(args).items()
        if v is not None
    )
    report = {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "questions": f"{args.skip}-{args.skip + len(examples) - 1}",
        "bundles": rows,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    header = (
        "| SAE | latents | k | postings B/token/field | bf16 keys / postings | "
        + " | ".join(f"exact@{b} | aligned@{b}" for b in budgets)
        + f" | aligned / exact @{budgets[len(budgets) // 2]} (± s.e.) |"
    )
    lines = [
        f"S3-Pure evidence recall on HotpotQA haystacks, questions {report['questions']} "
        f"(~{args.words} words), {report['date']}",
        "",
        header,
        "|---|---|---|---|---|" + "---|---|" * len(budgets) + "---|",
    ]
    lines += [_row(r, budgets) for r in rows]
    lines += ["", f"Reproduce: `{command}`", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


def _row(r: dict[str, Any], budgets: Sequence[int]) -> str:
    config = next(iter(r["layers"].values()))
    middle = r["recall"][str(budgets[len(budgets) // 2])]
    cells = " | ".join(
        f"{r['recall'][str(b)]['exact']:.3f} | {r['recall'][str(b)]['aligned']:.3f}"
        for b in budgets
    )
    return (
        f"| {r['sae']} | {config['n_latents']} | {config['k']} | "
        f"{r['postings_bytes_per_token_per_field']:.1f} | {r['bf16_keys_over_postings']:.1f}x | "
        f"{cells} | {middle['aligned_over_exact']:.1%} (± {middle['ratio_standard_error']:.1%}) |"
    )


def _line(r: dict[str, Any], budgets: Sequence[int]) -> str:
    middle = r["recall"][str(budgets[len(budgets) // 2])]
    return (
        f"{r['sae']}: bf16 keys / postings {r['bf16_keys_over_postings']:.1f}x, "
        f"aligned {middle['aligned']:.3f} / exact {middle['exact']:.3f} = "
        f"{middle['aligned_over_exact']:.1%} ± {middle['ratio_standard_error']:.1%}"
    )


if __name__ == "__main__":
    main()
