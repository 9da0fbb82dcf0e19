"""Compare the results of two ``s3-retriever eval`` runs, ignoring timings.

Every recall, F1 and count in ``results`` must be equal; ``*_seconds`` fields measure the machine,
not the method, and are left out. Exits 1 and lists the differences when any number differs.

    python scripts/compare_eval.py BEFORE.json AFTER.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any


def differences(before: Any, after: Any, path: str = "") -> list[str]:
    """Paths whose values differ between two result trees (timing fields skipped)."""
    if isinstance(before, dict) and isinstance(after, dict):
        found: list[str] = []
        for key in sorted(set(before) | set(after), key=str):
            if str(key).endswith("seconds"):
                continue
            if key not in before or key not in after:
                found.append(f"{path}/{key}: only in one run")
            else:
                found += differences(before[key], after[key], f"{path}/{key}")
        return found
    if isinstance(before, list) and isinstance(after, list) and len(before) == len(after):
        return [
            d
            for i, pair in enumerate(zip(before, after, strict=True))
            for d in differences(*pair, f"{path}[{i}]")
        ]
    return [] if before == after else [f"{path}: {before!r} != {after!r}"]


def count_values(tree: Any) -> int:
    """Numbers compared (timing fields excluded)."""
    if isinstance(tree, dict):
        return sum(count_values(v) for k, v in tree.items() if not str(k).endswith("seconds"))
    if isinstance(tree, list):
        return sum(count_values(v) for v in tree)
    return 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    args = parser.parse_args()
    before = json.loads(args.before.read_text())["results"]
    after = json.loads(args.after.read_text())["results"]
    found = differences(before, after)
    for line in found:
        print(line)
    print(f"{count_values(before)} values compared, {len(found)} differ")
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
