"""Per-question numbers of an evaluation run, keyed as the report lays them out."""

from __future__ import annotations

from collections import defaultdict

import numpy as np


class Tally:
    """Lists of per-question numbers, keyed like the report."""

    def __init__(self) -> None:
        self.values: dict[tuple[str, ...], list[float]] = defaultdict(list)

    def add(self, key: tuple[str, ...], value: float) -> None:
        # NaN marks a question the metric does not apply to (a yes/no answer, no gold): skipped.
        if not np.isnan(value):
            self.values[key].append(float(value))

    def mean(self, key: tuple[str, ...]) -> float | None:
        vals = self.values.get(key)
        return float(np.mean(vals)) if vals else None
