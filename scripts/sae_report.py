"""Fidelity report of the shipped SAE bundle on held-out text (JSON, markdown and an elbow PNG).

Held-out text: HotpotQA paragraphs of questions 300-379 (the SAEs trained on 380-499); question
queries for logit fidelity come from the same 80 questions. With ``--values`` (a value bundle from
``scripts/train_default_saes.py --values-only``) the report adds the values' FVU and elbow and
STA's dual-budget perplexities (keys only, values only, both).

    python scripts/train_default_saes.py --data ../shared/data --values-only \
        --out runs/sae_values/SmolLM2-135M-Instruct
    python scripts/sae_report.py --data ../shared/data \
        --values runs/sae_values/SmolLM2-135M-Instruct --out docs/results/sae_report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from s3_retriever.model.loading import load_model
from s3_retriever.sae.bundle import SAEBundle, shipped_bundle_dir
from s3_retriever.sae.fidelity import build_report, write_report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", type=Path)
    parser.add_argument("--sae", default=None, type=Path)
    parser.add_argument("--values", default=None, type=Path, help="value SAE bundle folder")
    parser.add_argument("--max-tokens", type=int, default=30_000)
    parser.add_argument("--out", default="docs/results/sae_report", type=Path)
    args = parser.parse_args()
    path = args.data / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][300:380]
    texts = [
        "\n\n".join(f"{c['title']}\n{c['paragraph_text']}" for c in row["contexts"]) for row in rows
    ]
    questions = [row["question_text"] for row in rows]
    loaded = load_model()
    bundle = SAEBundle.load(args.sae or shipped_bundle_dir(loaded.model_id))
    values = SAEBundle.load(args.values) if args.values else None
    report = build_report(loaded, bundle, texts, questions, args.max_tokens, values=values)
    markdown, plotted = write_report(report, args.out)
    if not plotted:
        print("matplotlib is not installed; skipped the elbow plot")
    print(markdown)


if __name__ == "__main__":
    main()
