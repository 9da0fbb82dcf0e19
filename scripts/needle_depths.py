"""Needle in a haystack at ten depths, for the default index and the compact one.

Each setting indexes a ~23,000-token haystack (the Python language reference, with the needle of
:mod:`s3_retriever.eval.needle` planted at each depth) and asks the question in S3-Pure and
S3-Hybrid mode at a 256-token budget; a depth counts when a returned span covers the needle.

    python scripts/needle_depths.py --out docs/results/needle_depths
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import json
import sys
from pathlib import Path

from s3_retriever import S3Retriever
from s3_retriever.eval.needle import DEPTHS, QUESTION, needle_found, plant, reference_text

SETTINGS = {"default": False, "compact": True}
MODES = ("s3", "hybrid")


def run(compact: bool, haystack: str, budget: int) -> dict[str, list[bool]]:
    retriever = S3Retriever.from_pretrained(compact=compact)
    retriever.scanner.config = dataclasses.replace(retriever.scanner.config, show_progress=False)
    found: dict[str, list[bool]] = {mode: [] for mode in MODES}
    for depth in DEPTHS:
        text = plant(haystack, depth)
        retriever.delete(retriever.doc_ids)
        retriever.add_documents([text], ids=["haystack"])
        for mode in MODES:
            hits = retriever.retrieve(QUESTION, token_budget=budget, mode=mode)  # type: ignore[arg-type]
            found[mode].append(needle_found(hits, text))
        print(
            f"  depth {depth:.2f}: " + ", ".join(f"{m} {found[m][-1]}" for m in MODES), flush=True
        )
    return found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", type=int, default=256)
    parser.add_argument("--chars", type=int, default=95_000, help="haystack characters")
    parser.add_argument("--out", required=True, help="output path stem (.json, .md)")
    args = parser.parse_args()
    haystack = reference_text(0)[: args.chars]
    results = {}
    for name, compact in SETTINGS.items():
        print(name, flush=True)
        results[name] = run(compact, haystack, args.budget)
    command = "python scripts/needle_depths.py " + " ".join(sys.argv[1:])
    report = {
        "date": datetime.date.today().isoformat(),
        "command": command,
        "depths": list(DEPTHS),
        "budget": args.budget,
        "found": results,
    }
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(report, indent=1) + "\n")
    lines = [
        f"Needle found at ten depths of a ~23,000-token haystack, {args.budget}-token budget, "
        f"{report['date']}",
        "",
        "| index | " + " | ".join(f"{m} found" for m in MODES) + " |",
        "|---|" + "---|" * len(MODES),
    ]
    for name, found in results.items():
        lines.append(f"| {name} | " + " | ".join(f"{sum(found[m])}/10" for m in MODES) + " |")
    lines += ["", f"Reproduce: `{command}`", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
