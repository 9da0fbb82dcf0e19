"""Coverage pooling: a unit scores by how many question tokens find evidence around it.

The default pooling (:mod:`.units`) averages each position's attention over the question rows,
smooths it over a few tokens and keeps each unit's best position: a unit is as good as its
sharpest peak. Inside one long document that finds the sentence the question names. Across many
short documents it does not compare passages: a passage that holds one question word strongly
(a frequent entity) outscores one that holds every word of the question spread over its
sentences, because each row's attention to the second passage is split over several positions
far apart.

Coverage pooling keeps rows apart, as late-interaction retrievers do with token embeddings:
each question row's attention is reduced to its best position in every unit (``max``), each
unit takes, per row, the best of the units in a window of ``coverage_window`` tokens around it
(same document, and the same paragraph when spans stay inside one), and the rows' values are
summed after a transform. ``log`` counts a row by ``log(1 + N a)`` (``a`` its attention, ``N``
the candidate positions, so uniform attention counts 0): every question token that finds its
match adds about the same, whatever the sharpness of its head. ``mass`` adds the attention
itself, so sharp rows dominate as in the default pooling.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch

from s3_retriever.index.corpus import Corpus
from s3_retriever.search.spans import paragraph_starts

CoverageTransform = Literal["log", "mass"]
COVERAGE_TRANSFORMS: tuple[str, ...] = ("log", "mass")


class RowUnitMax:
    """Each question row's best attention per unit, gathered head by head.

    Rows are weighted so that the sum over rows is the mean over heads of each head's mean
    over its rows, the scale of the default pooling.
    """

    def __init__(self, corpus: Corpus) -> None:
        self.n_units = corpus.n_units
        self.rows: list[torch.Tensor] = []
        self.weights: list[np.ndarray] = []

    def add(self, unit_max: torch.Tensor, row_weight: np.ndarray) -> None:
        """``unit_max``: (rows, n_units) best attention per unit; ``row_weight``: (rows,)."""
        self.rows.append(unit_max)
        self.weights.append(row_weight.astype(np.float32))

    def stacked(self) -> tuple[torch.Tensor, np.ndarray]:
        if not self.rows:
            return torch.zeros((0, self.n_units)), np.zeros(0, np.float32)
        return torch.cat(self.rows), np.concatenate(self.weights)


def scatter_unit_max(
    probabilities: torch.Tensor, units: torch.Tensor, n_units: int
) -> torch.Tensor:
    """(rows, n_units) maximum of ``probabilities`` (rows, columns) over the columns of each unit.

    ``units`` gives each column's unit, (columns,) shared by all rows or (rows, columns); -1
    (a position no unit owns, or a padded column) is dropped.
    """
    n_rows = probabilities.shape[0]
    index = units if units.dim() == 2 else units.expand(n_rows, -1)
    index = torch.where(index < 0, n_units, index)  # one spare column takes what is dropped
    out = torch.zeros((n_rows, n_units + 1), dtype=torch.float32)
    out.scatter_reduce_(1, index, probabilities, reduce="amax", include_self=True)
    return out[:, :n_units]


def coverage_scores(
    row_max: RowUnitMax,
    corpus: Corpus,
    n_candidates: int,
    window: int,
    transform: CoverageTransform,
    within_paragraph: bool,
    document_weight: float = 0.0,
) -> np.ndarray:
    """Coverage score of every unit (see the module docstring). ``document_weight`` adds that
    share of the unit's whole document's coverage (each row's best anywhere in it): a prior
    for the document, which matters where documents are long (meetings) and windows are not."""
    unit_max, weights = row_max.stacked()
    n_units = corpus.n_units
    if unit_max.shape[0] == 0 or n_units == 0:
        return np.zeros(n_units, np.float32)
    values = torch.log1p(unit_max * float(max(n_candidates, 1))) if transform == "log" else unit_max
    pooled = values.clone()
    if window > 0:
        for shift, valid in _neighbour_shifts(corpus, window, within_paragraph):
            mask = torch.from_numpy(valid)
            # Unit u takes unit u + shift (and u - shift) where the pair is in one window.
            ahead = torch.where(mask, values[:, shift:], 0.0)
            pooled[:, :-shift] = torch.maximum(pooled[:, :-shift], ahead)
            behind = torch.where(mask, values[:, :-shift], 0.0)
            pooled[:, shift:] = torch.maximum(pooled[:, shift:], behind)
    row_weight = torch.from_numpy(weights)
    scores = row_weight @ (pooled + values)
    if document_weight > 0:
        unit_doc = torch.from_numpy(np.ascontiguousarray(corpus.unit_doc, dtype=np.int64))
        per_document = scatter_unit_max(values, unit_doc, len(corpus))
        scores += document_weight * (row_weight @ per_document)[unit_doc]
    return scores.numpy().astype(np.float32)


def _neighbour_shifts(
    corpus: Corpus, window: int, within_paragraph: bool
) -> list[tuple[int, np.ndarray]]:
    """For each shift s, which units u have u + s in their window (same document, centres at
    most ``window // 2`` tokens apart, no blank line between them when ``within_paragraph``)."""
    tokens = corpus.unit_tokens
    centre = (tokens[:, 0] + tokens[:, 1]) / 2.0
    doc = corpus.unit_doc
    paragraph = (
        np.cumsum(paragraph_starts(corpus))
        if within_paragraph
        else np.zeros(corpus.n_units, np.int64)
    )
    half = window / 2.0
    shifts = []
    for shift in range(1, corpus.n_units):
        valid = (
            (doc[shift:] == doc[:-shift])
            & (paragraph[shift:] == paragraph[:-shift])
            & (centre[shift:] - centre[:-shift] <= half)
        )
        if not valid.any():
            break
        shifts.append((shift, valid))
    return shifts
