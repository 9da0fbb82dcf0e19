"""The two codings of compact postings: LEB128 varints for position gaps and one byte on a fixed
logarithmic grid for activations (see :mod:`s3_retriever.index.postings`)."""

from __future__ import annotations

import functools

import numpy as np

_MAX_VARINT_BYTES = 5
"""Gaps below 2**35 positions: far beyond any int64-addressable corpus this store will hold."""

_LOG2_LOW, _LOG2_HIGH = -8.0, 8.0
_STEPS_PER_OCTAVE = 254 / (_LOG2_HIGH - _LOG2_LOW)


def quantize_activations(acts: np.ndarray) -> np.ndarray:
    """uint8 codes of non-negative activations on the fixed log grid (0 codes zero)."""
    if isinstance(acts, np.ndarray) and acts.dtype == np.float16:
        # The scan hands over float16 activations: 65,536 possible values, so one table lookup
        # gives exactly the code the float64 arithmetic below gives, at a fraction of its cost.
        return _float16_codes()[acts.view(np.uint16)]
    acts = np.asarray(acts, np.float64)
    with np.errstate(divide="ignore"):
        steps = np.rint((np.log2(np.maximum(acts, 0)) - _LOG2_LOW) * _STEPS_PER_OCTAVE)
    # Values below the grid's first step become its first code, not zero: they still posted.
    codes = np.clip(steps, 0, 254) + 1
    return np.where(acts > 0, codes, 0).astype(np.uint8)


@functools.cache
def _float16_codes() -> np.ndarray:
    """The code of every float16 bit pattern, by :func:`quantize_activations`'s arithmetic."""
    every = np.arange(1 << 16, dtype=np.uint16).view(np.float16)
    return quantize_activations(every.astype(np.float64))


def dequantize_activations(codes: np.ndarray) -> np.ndarray:
    """float32 activations of :func:`quantize_activations` codes."""
    codes = np.asarray(codes)
    values = np.exp2(_LOG2_LOW + (codes.astype(np.float32) - 1) / _STEPS_PER_OCTAVE)
    return np.where(codes > 0, values, 0).astype(np.float32)


def encode_varints(values: np.ndarray) -> np.ndarray:
    """LEB128 bytes of non-negative integers: 7 bits a byte, high bit set on all but the last."""
    values = values.astype(np.int64)
    if len(values) and int(values.min()) < 0:
        raise ValueError("varints encode non-negative integers only")
    n_bytes = _varint_sizes(values)
    return _encode_varints_sized(values, n_bytes, np.cumsum(n_bytes) - n_bytes)


def _encode_varints_sized(
    values: np.ndarray, n_bytes: np.ndarray, starts: np.ndarray
) -> np.ndarray:
    """:func:`encode_varints` of non-negative int64 ``values`` whose byte counts and first
    byte offsets are already known."""
    out = np.zeros(int(n_bytes.sum()), np.uint8)
    # Most gaps fit one byte, so the first byte is written unmasked and only longer values loop.
    out[starts] = ((values & 0x7F) | ((n_bytes > 1).astype(np.int64) << 7)).astype(np.uint8)
    long = np.flatnonzero(n_bytes > 1)
    for b in range(1, _MAX_VARINT_BYTES):
        long = long[n_bytes[long] > b]
        if not len(long):
            break
        chunk = (values[long] >> (7 * b)) & 0x7F
        more = (n_bytes[long] > b + 1).astype(np.int64) << 7
        out[starts[long] + b] = (chunk | more).astype(np.uint8)
    return out


def _varint_sizes(values: np.ndarray) -> np.ndarray:
    n_bytes = np.ones(len(values), np.int8)
    for b in range(1, _MAX_VARINT_BYTES):
        longer = values >= (1 << (7 * b))
        n_bytes += longer
        if not longer.any():  # sizes only grow with b; the rest of the passes would add zeros
            break
    return n_bytes.astype(np.int64)


def decode_varints(data: np.ndarray) -> np.ndarray:
    """Inverse of :func:`encode_varints` (int64)."""
    if len(data) == 0:
        return np.zeros(0, np.int64)
    data = np.asarray(data, np.uint8)
    last = (data & 0x80) == 0
    first = np.flatnonzero(np.concatenate([[True], last[:-1]]))
    owner = np.cumsum(np.concatenate([[0], last[:-1]]))
    shift = (np.arange(len(data)) - first[owner]) * 7
    parts = (data & 0x7F).astype(np.int64) << shift
    return np.add.reduceat(parts, first)
