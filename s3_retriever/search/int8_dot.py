"""Logits of int8 keys against float question vectors, with integer matmuls.

The stored keys are int8 with one float scale per token. Dequantising them before a float matmul
costs more than the matmul itself (a conversion pass and a multiply pass over every key read).
Instead each question vector is written as ``(coarse * 256 + fine) * step`` with int8 ``coarse``
and ``fine`` (about 16 bits, so the keys' own int8 rounding stays the only coarse step), both
parts are multiplied with the int8 keys in one int32-accumulating matmul (``torch._int_mm``), and
the scales are applied to the int32 logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

# Fine steps per coarse step of the int8 question codes.
_FINE_STEPS = 256


@dataclass(frozen=True)
class QuestionCodes:
    """Question rows as two int8 parts, ready for :func:`int8_logits`."""

    codes: torch.Tensor
    """(dim, 2 * rows) int8: the coarse parts of all rows, then their fine parts."""
    rows: int
    step: float
    """Value of one fine step."""

    @classmethod
    def of(cls, queries: np.ndarray) -> QuestionCodes:
        """One step for all rows (absmax / 127 / 256) gives every row about 16 bits."""
        peak = float(np.abs(queries).max()) if queries.size else 0.0
        coarse_step = peak / 127.0 if peak > 0 else 1.0
        scaled = queries.astype(np.float64) / coarse_step
        coarse = np.clip(np.rint(scaled), -127, 127)
        fine = np.clip(np.rint((scaled - coarse) * _FINE_STEPS), -127, 127)
        both = np.concatenate([coarse, fine]).astype(np.int8)
        return cls(torch.from_numpy(both).T.contiguous(), len(queries), coarse_step / _FINE_STEPS)

    def select(self, lo: int, hi: int) -> QuestionCodes:
        """Rows ``lo:hi`` only."""
        codes = torch.cat([self.codes[:, lo:hi], self.codes[:, self.rows + lo : self.rows + hi]], 1)
        return QuestionCodes(codes.contiguous(), hi - lo, self.step)


def int8_logits(
    key_codes: torch.Tensor,
    key_factor: torch.Tensor,
    questions: QuestionCodes,
    columns: torch.Tensor | None = None,
) -> torch.Tensor:
    """(rows, keys) logits: int32 products scaled to float by ``key_factor`` (each key's scale
    times the question step and any softmax scale, one multiply per logit).

    With ``columns`` (rows, width), row r keeps only the keys ``columns[r]``: the products are
    still one matmul, and the rest of the work is done for the kept logits only.
    """
    both = torch._int_mm(key_codes, questions.codes)
    coarse, fine = both[:, : questions.rows].T, both[:, questions.rows :].T
    if columns is None:
        factor = key_factor[None, :]
    else:
        coarse, fine = torch.gather(coarse, 1, columns), torch.gather(fine, 1, columns)
        factor = key_factor[columns]
    # |coarse logit| <= 64 * 127 * 127 (for 64 dims), so x256 stays inside int32.
    return (coarse * _FINE_STEPS + fine) * factor
