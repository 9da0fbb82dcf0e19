"""CPU stores keyed by global token position: SAE postings (CSR) and quantised raw keys.

S3 step 3: an inverted index feature id -> token positions with activations. The paper's prototype
used Python dicts; here each field (layer, kv-head) is a CSR matrix over latents: ``indptr`` into
contiguous ``positions`` (int32) and ``activations`` (float16) arrays. New postings are buffered and
merged on the next read, so appends stay cheap and reads stay contiguous.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

Field = tuple[int, int]
"""(layer, kv_head): one stream of keys."""


@dataclass
class Postings:
    """CSR postings of one field: latent j owns ``positions[indptr[j]:indptr[j + 1]]``."""

    n_latents: int
    indptr: np.ndarray = field(default_factory=lambda: np.zeros(1, np.int64))
    positions: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int32))
    activations: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float16))
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.indptr.shape[0] != self.n_latents + 1:
            self.indptr = np.zeros(self.n_latents + 1, np.int64)

    def append(self, positions: np.ndarray, ids: np.ndarray, acts: np.ndarray) -> None:
        """Buffer postings of ``len(positions)`` tokens, each with ``k`` (id, activation) pairs."""
        k = ids.shape[1]
        self._pending.append(
            (
                np.repeat(positions.astype(np.int32), k),
                ids.reshape(-1).astype(np.int32),
                acts.reshape(-1).astype(np.float16),
            )
        )

    def flush(self) -> None:
        """Merge buffered postings into the CSR arrays."""
        if not self._pending:
            return
        new_pos = np.concatenate([p for p, _, _ in self._pending])
        new_ids = np.concatenate([i for _, i, _ in self._pending])
        new_act = np.concatenate([a for _, _, a in self._pending])
        self._pending = []
        old_ids = np.repeat(np.arange(self.n_latents, dtype=np.int32), np.diff(self.indptr))
        all_ids = np.concatenate([old_ids, new_ids])
        all_pos = np.concatenate([self.positions, new_pos])
        all_act = np.concatenate([self.activations, new_act])
        # Sort by (latent, position): lists stay position-ordered, so results never depend on
        # the order in which documents arrived.
        order = np.lexsort((all_pos, all_ids))
        self.positions = all_pos[order]
        self.activations = all_act[order]
        counts = np.bincount(all_ids, minlength=self.n_latents)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    def gather(self, latents: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Postings of several latents at once: (positions, activations, index into latents)."""
        self.flush()
        starts = self.indptr[latents]
        lengths = self.indptr[latents + 1] - starts
        total = int(lengths.sum())
        if total == 0:
            return np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros(0, np.int64)
        owner = np.repeat(np.arange(len(latents)), lengths)
        offsets = np.arange(total) - np.repeat(np.cumsum(lengths) - lengths, lengths)
        flat = np.repeat(starts, lengths) + offsets
        return (
            self.positions[flat].astype(np.int64),
            self.activations[flat].astype(np.float32),
            owner,
        )

    def doc_freq(self) -> np.ndarray:
        """Number of postings per latent."""
        self.flush()
        return np.diff(self.indptr)

    def keep(self, keep_pos: np.ndarray) -> None:
        """Drop postings of removed positions and renumber the rest (``keep_pos`` is a mask)."""
        self.flush()
        ids = np.repeat(np.arange(self.n_latents, dtype=np.int32), np.diff(self.indptr))
        alive = keep_pos[self.positions]
        new_index = (np.cumsum(keep_pos) - 1).astype(np.int32)
        self.positions = new_index[self.positions[alive]]
        self.activations = self.activations[alive]
        counts = np.bincount(ids[alive], minlength=self.n_latents)
        self.indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)

    @property
    def nbytes(self) -> int:
        self.flush()
        return int(self.indptr.nbytes + self.positions.nbytes + self.activations.nbytes)


@dataclass
class KeyStore:
    """Raw pre-RoPE keys of one field, int8 with one float scale per token (absmax).

    This is the exact-attention reference: a 64-dim head costs 68 bytes per token.
    """

    head_dim: int
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8))
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if self.codes.shape[1:] != (self.head_dim,):
            self.codes = np.zeros((0, self.head_dim), np.int8)

    def append(self, positions: np.ndarray, keys: np.ndarray) -> None:
        """Quantise and buffer keys (float32, shape (n, head_dim)) at global ``positions``."""
        scale = np.abs(keys).max(axis=1) / 127.0
        scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
        codes = np.clip(np.rint(keys / scale[:, None]), -127, 127).astype(np.int8)
        self._pending.append((positions.astype(np.int64), codes, scale))

    def flush(self, n_positions: int) -> None:
        """Place buffered keys at their positions; the store then covers ``n_positions``."""
        if not self._pending and len(self.scales) == n_positions:
            return
        codes = np.zeros((n_positions, self.head_dim), np.int8)
        scales = np.zeros(n_positions, np.float32)
        codes[: len(self.scales)] = self.codes[:n_positions]
        scales[: len(self.scales)] = self.scales[:n_positions]
        for positions, new_codes, new_scales in self._pending:
            codes[positions] = new_codes
            scales[positions] = new_scales
        self._pending = []
        self.codes, self.scales = codes, scales

    def dequantize(self, start: int, stop: int) -> np.ndarray:
        """float32 keys of positions [start, stop)."""
        return self.codes[start:stop].astype(np.float32) * self.scales[start:stop, None]

    def keep(self, keep_pos: np.ndarray) -> None:
        self.flush(len(keep_pos))
        self.codes = self.codes[keep_pos]
        self.scales = self.scales[keep_pos]

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)
