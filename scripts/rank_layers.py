"""Rank layers by how well their attention heads retrieve known evidence (layer choice by evidence).

Reads the per-head sweep written by ``scripts/sweep_heads.py`` (recall@4 of the two gold HotpotQA
passages, exact attention, tuning questions 300-359) and ranks layers by their best head, with the
mean of their best three heads and of all their heads beside it. The top layers are the ones a
bundle instruments.

    python scripts/rank_layers.py --sweep docs/results/heads_sweep.json \
        --out docs/results/layer_ranking.md
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path


def rank_layers(results: list[dict], centring: str) -> list[dict]:
    """Per layer: best head, recall@4 of the best, the mean of the best three and of all heads."""
    per_layer: dict[int, list[tuple[float, int]]] = defaultdict(list)
    for row in results:
        if row["centring"] == centring:
            per_layer[row["layer"]].append((row["recall@4"], row["head"]))
    ranking = []
    for layer, heads in per_layer.items():
        heads.sort(key=lambda pair: (-pair[0], pair[1]))  # ties: the lower head first
        ranking.append(
            {
                "layer": layer,
                "best_head": heads[0][1],
                "best": heads[0][0],
                "best_three": sum(r for r, _ in heads[:3]) / min(3, len(heads)),
                "all_heads": sum(r for r, _ in heads) / len(heads),
            }
        )
    return sorted(ranking, key=lambda row: (-row["best"], -row["best_three"]))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sweep", default="docs/results/heads_sweep.json", type=Path)
    parser.add_argument("--centring", default="question", choices=("question", "text", "none"))
    parser.add_argument("--out", default=None, type=Path, help="markdown file to write")
    args = parser.parse_args()
    sweep = json.loads(args.sweep.read_text())
    ranking = rank_layers(sweep["results"], args.centring)
    lines = [
        f"Layers ranked by recall@4 of gold passages (exact attention, {args.centring}-centred "
        f"queries; sweep settings: {sweep['args']})",
        "",
        "| rank | layer | best head | recall@4, best | mean, best 3 heads | mean, all heads |",
        "|---|---|---|---|---|---|",
    ]
    for rank, row in enumerate(ranking, 1):
        lines.append(
            f"| {rank} | {row['layer']} | {row['best_head']} | {row['best']:.3f} | "
            f"{row['best_three']:.3f} | {row['all_heads']:.3f} |"
        )
    markdown = "\n".join(lines) + "\n"
    if args.out:
        args.out.write_text(markdown)
    print(markdown)


if __name__ == "__main__":
    main()
