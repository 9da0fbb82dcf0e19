"""Raw pre-RoPE keys of one field, int8 with a float scale per token: the exact scorer's store."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar, cast

import numpy as np

from s3_retriever.errors import IndexLoadError
from s3_retriever.index.arrays import typed, write_npy

T = TypeVar("T")


class QuantizedKeys(NamedTuple):
    """Keys already quantised as :meth:`KeyStore.append` would (the scan does it on the model's
    device: :func:`s3_retriever.index.key_encoding.quantize_keys_on_device`)."""

    codes: np.ndarray
    """int8, shape (n, head_dim)."""
    scales: np.ndarray
    """float32 absmax / 127 of each key (1.0 for an all-zero key), shape (n,)."""


def quantize_keys(keys: np.ndarray) -> QuantizedKeys:
    """int8 codes with one float32 scale per key (absmax / 127) of float32 keys (n, head_dim)."""
    scale = np.abs(keys).max(axis=1) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    codes = np.clip(np.rint(keys / scale[:, None]), -127, 127).astype(np.int8)
    return QuantizedKeys(codes, scale)


@dataclass
class KeyStore:
    """Raw pre-RoPE keys of one field, int8 with one float scale per token (absmax).

    This is the exact-attention reference: a 64-dim head costs 68 bytes per token.
    """

    head_dim: int
    codes: np.ndarray = field(default_factory=lambda: np.zeros((0, 0), np.int8))
    scales: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float32))
    _pending: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = field(default_factory=list)
    # Search structures derived from the keys (built on first use); any change to the keys
    # drops them.
    _derived: dict[Hashable, Any] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        if self.codes.shape[1:] != (self.head_dim,):
            self.codes = np.zeros((0, self.head_dim), np.int8)

    def append(self, positions: np.ndarray, keys: np.ndarray | QuantizedKeys) -> None:
        """Buffer keys at global ``positions``: float32 keys (n, head_dim) are quantised here,
        :class:`QuantizedKeys` are taken as they are."""
        quantized = keys if isinstance(keys, QuantizedKeys) else quantize_keys(keys)
        self._pending.append((positions.astype(np.int64), quantized.codes, quantized.scales))

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
        self._derived = {}

    def extend(self, codes: np.ndarray, scales: np.ndarray) -> None:
        """Place keys of the positions right after the stored ones, in order (one staged call's,
        :mod:`s3_retriever.index.staging`): the same arrays :meth:`flush` would build, and an
        empty store takes them without a copy."""
        self.flush(len(self.scales))
        if len(self.scales):
            codes = np.concatenate([self.codes, codes])
            scales = np.concatenate([self.scales, scales])
        self.codes, self.scales = codes, scales
        self._derived = {}

    def dequantize(self, start: int, stop: int) -> np.ndarray:
        """float32 keys of positions [start, stop)."""
        return self.codes[start:stop].astype(np.float32) * self.scales[start:stop, None]

    def keep(self, keep_pos: np.ndarray) -> None:
        self.flush(len(keep_pos))
        self.codes = self.codes[keep_pos]
        self.scales = self.scales[keep_pos]
        self._derived = {}

    def derived(self, key: Hashable, build: Callable[[KeyStore], T]) -> T:
        """``build(self)``, computed on first use and kept until the keys change."""
        if key not in self._derived:
            self._derived[key] = build(self)
        return cast(T, self._derived[key])

    def has_derived(self, key: Hashable) -> bool:
        return key in self._derived

    def set_derived(self, key: Hashable, value: Any) -> None:
        """Keep ``value`` as derived from the current keys (one read back with a saved index)."""
        self._derived[key] = value

    @property
    def nbytes(self) -> int:
        return int(self.codes.nbytes + self.scales.nbytes)

    def save(self, stem: Path, n_positions: int) -> None:
        """Write the codes and scales as ``{stem}_codes.npy`` and ``{stem}_scales.npy``."""
        self.flush(n_positions)
        write_npy(Path(f"{stem}_codes.npy"), self.codes)
        write_npy(Path(f"{stem}_scales.npy"), self.scales)

    def read(
        self, arrays: Mapping[str, np.ndarray], stem: str, n_positions: int, folder: Path
    ) -> None:
        """Take the keys :meth:`save` wrote from ``arrays`` (by file name), checking them."""
        self.codes = typed(arrays, f"{stem}_codes.npy", "i", "int8 codes", folder)
        self.scales = typed(arrays, f"{stem}_scales.npy", "f", "float scales", folder)
        self._derived = {}
        if (
            self.codes.shape != (n_positions, self.head_dim)
            or self.scales.shape != (n_positions,)
            or self.codes.dtype != np.int8
        ):
            raise IndexLoadError(
                f"{folder}: stored keys have the wrong shape or type; rebuild the index."
            )
