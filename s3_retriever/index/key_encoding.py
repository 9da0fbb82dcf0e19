"""From scanned batches to postings and stored keys: SAE encoding where the model runs.

S3 step 2 of indexing. A batch's keys are encoded on the model's device, one matmul and one top-k
per layer for all of that layer's indexed KV heads (they share a dictionary), and only the small
results (latent ids, activations, and the raw keys when the exact scorer needs them) travel to the
CPU. On a GPU the copy goes into pinned memory without blocking, and the CPU-side appends of one
batch happen while the GPU already runs the next: the scan never waits for the index.
"""

from __future__ import annotations

import copy
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from s3_retriever.index.key_store import QuantizedKeys
from s3_retriever.index.postings import Field
from s3_retriever.model.scan import BatchCapture
from s3_retriever.sae.bundle import SAEBundle, TopKSAE
from s3_retriever.sae.pursuit import code_vectors

NewKeys = dict[Field, list[tuple[np.ndarray, QuantizedKeys | np.ndarray]]]
"""field -> (global positions, quantised keys, or float32 keys) per chunk, waiting to be
committed."""
NewCodes = dict[Field, list[tuple[np.ndarray, np.ndarray, np.ndarray]]]
"""field -> (global positions, latent ids, activations) per chunk, waiting to be committed."""


class KeySink(Protocol):
    """Where a field's chunks of keys go: a list (:data:`NewKeys`) or a bounded stage
    (:class:`s3_retriever.index.staging.KeyStage`)."""

    def append(self, item: tuple[np.ndarray, QuantizedKeys | np.ndarray], /) -> None: ...


class CodeSink(Protocol):
    """Where a field's chunks of SAE codes go: a list (:data:`NewCodes`) or a bounded stage
    (:class:`s3_retriever.index.staging.PostingsStage`)."""

    def append(self, item: tuple[np.ndarray, np.ndarray, np.ndarray], /) -> None: ...


# Pre-activations of one encoding slice hold this many floats at most (64 MiB in float32): the
# dense (vectors x latents) matrix is the largest tensor of the encoding, and on a GPU it would
# otherwise grow with the batch and eat the memory headroom the scan promises.
_MAX_PREACTIVATIONS = 1 << 24
# On a CPU, slices of a few hundred vectors keep that matrix in the core's cache between the
# matmul, the ReLU and the top-k: SAE encoding took half as long as with 8,192-vector slices
# (benchmarks/cpu_indexing.py profiles the phases of add_documents).
_CPU_PREACTIVATIONS = 1 << 20


@dataclass
class _HostBatch:
    """One batch's encoding results, on their way to (or already in) CPU memory."""

    items: list[tuple[int, int, int]]
    offset: int
    codes: dict[int, tuple[torch.Tensor, torch.Tensor]]
    """layer -> (latent ids (rows, width, heads, k), activations float16, same shape)."""
    keys: dict[int, tuple[torch.Tensor, torch.Tensor]]
    """layer -> int8 key codes (rows, width, heads, head_dim) and float32 scales (rows, width,
    heads)."""
    ready: torch.cuda.Event | None
    """Recorded after the copies; None when everything already lives on the CPU."""


class KeyEncoder:
    """Encodes the keys of indexed fields batch by batch and hands them to the CPU stores."""

    def __init__(
        self,
        bundle: SAEBundle,
        fields: Sequence[Field],
        head_dim: int,
        device: torch.device,
        store_keys: bool,
        store_postings: bool,
    ) -> None:
        self.fields = tuple(fields)
        self.head_dim = head_dim
        self.device = device
        self.store_keys = store_keys
        self.store_postings = store_postings
        self.key_coding = bundle.key_coding
        self.layer_heads: dict[int, list[int]] = {}
        for layer, kv in self.fields:
            self.layer_heads.setdefault(layer, []).append(kv)
        on_cpu = device.type == "cpu"
        self.saes: dict[int, TopKSAE] = {}
        self.key_maps: dict[int, torch.Tensor] = {}
        if store_postings:
            for layer in self.layer_heads:
                sae = bundle.saes[layer]
                # The bundle keeps CPU weights (saving and query scoring read them); the scan
                # gets its own copy where the model runs.
                self.saes[layer] = sae if on_cpu else copy.deepcopy(sae).to(device)
                if layer in bundle.key_maps:
                    self.key_maps[layer] = bundle.key_maps[layer].to(device)

    def run(
        self,
        batches: Iterable[BatchCapture],
        doc_base: np.ndarray,
        new_keys: Mapping[Field, KeySink],
        new_codes: Mapping[Field, CodeSink],
    ) -> None:
        """Encode every batch; each batch is stored while the next one is on the device."""
        pending: _HostBatch | None = None
        for captured in batches:
            encoded = self.encode(captured)
            if pending is not None:
                self.store(pending, doc_base, new_keys, new_codes)
            pending = encoded
        if pending is not None:
            self.store(pending, doc_base, new_keys, new_codes)

    @torch.inference_mode()
    def encode(self, captured: BatchCapture) -> _HostBatch:
        """Queue the SAE encoding of one batch and the copy of its results to the CPU."""
        codes: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        keys: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        for layer, kv_heads in self.layer_heads.items():
            flat = captured.keys[layer]
            rows, width = flat.shape[0], flat.shape[1]
            layer_keys = flat.reshape(rows, width, -1, self.head_dim)[:, :, kv_heads, :]
            if self.store_postings:
                codes[layer] = self._encode_layer(layer, layer_keys)
            if self.store_keys:
                keys[layer] = quantize_keys_on_device(layer_keys)
        if self.device.type != "cuda":
            return _HostBatch(captured.items, captured.offset, codes, keys, None)
        return self._to_host(captured, codes, keys)

    def _encode_layer(
        self, layer: int, layer_keys: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k ids (int16 when they fit, else int32) and float16 activations of one layer."""
        sae = self.saes[layer]
        vectors = layer_keys.reshape(-1, self.head_dim)
        key_map = self.key_maps.get(layer)
        limit = _CPU_PREACTIVATIONS if self.device.type == "cpu" else _MAX_PREACTIVATIONS
        step = max(1, limit // sae.config.n_latents)
        id_parts, act_parts = [], []
        for start in range(0, vectors.shape[0], step):
            part = vectors[start : start + step].float()
            if key_map is not None:
                part = part @ key_map
            ids, acts = code_vectors(sae, part, self.key_coding)
            id_parts.append(ids)
            act_parts.append(acts)
        id_dtype = (
            torch.int16 if sae.config.n_latents <= torch.iinfo(torch.int16).max else torch.int32
        )
        shape = (*layer_keys.shape[:3], sae.config.k)
        # Postings keep float16 activations: casting here halves the copy and changes nothing.
        return (
            torch.cat(id_parts).to(id_dtype).reshape(shape),
            torch.cat(act_parts).to(torch.float16).reshape(shape),
        )

    def _to_host(
        self,
        captured: BatchCapture,
        codes: dict[int, tuple[torch.Tensor, torch.Tensor]],
        keys: dict[int, tuple[torch.Tensor, torch.Tensor]],
    ) -> _HostBatch:
        # The copies are queued on the compute stream, behind the encoding: they are a few hundred
        # kB per batch, and a side stream for them measured no faster on an H200 (slower in one
        # run, bench_gpu_scan_long_*; the same in another, bench_gpu_scan_side_stream).
        def copy_out(tensor: torch.Tensor) -> torch.Tensor:
            host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            host.copy_(tensor, non_blocking=True)
            return host

        host_codes = {layer: (copy_out(i), copy_out(a)) for layer, (i, a) in codes.items()}
        host_keys = {layer: (copy_out(c), copy_out(s)) for layer, (c, s) in keys.items()}
        ready = torch.cuda.Event()
        ready.record(torch.cuda.current_stream(self.device))
        return _HostBatch(captured.items, captured.offset, host_codes, host_keys, ready)

    def store(
        self,
        batch: _HostBatch,
        doc_base: np.ndarray,
        new_keys: Mapping[Field, KeySink],
        new_codes: Mapping[Field, CodeSink],
    ) -> None:
        """Wait for one batch's results and append them, chunk by chunk, at global positions."""
        if batch.ready is not None:
            batch.ready.synchronize()
        codes = {layer: (i.numpy(), a.numpy()) for layer, (i, a) in batch.codes.items()}
        keys = {layer: (c.numpy(), s.numpy()) for layer, (c, s) in batch.keys.items()}
        for row, (doc_index, start, end) in enumerate(batch.items):
            span = slice(batch.offset, batch.offset + end - start)
            positions = doc_base[doc_index] + start + np.arange(end - start, dtype=np.int64)
            for layer, kv_heads in self.layer_heads.items():
                for slot, kv in enumerate(kv_heads):
                    if layer in codes:
                        ids, acts = codes[layer]
                        new_codes[(layer, kv)].append(
                            (positions, ids[row, span, slot], acts[row, span, slot])
                        )
                    if layer in keys:
                        codes_of, scales_of = keys[layer]
                        quantized = QuantizedKeys(
                            codes_of[row, span, slot], scales_of[row, span, slot]
                        )
                        new_keys[(layer, kv)].append((positions, quantized))


def quantize_keys_on_device(keys: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """int8 codes and float32 scales of keys (..., head_dim), where they were computed.

    The same arithmetic as :func:`s3_retriever.index.key_store.quantize_keys`, in float32 with
    correctly rounded divisions (both divisors are full tensors: PyTorch's CUDA division by a
    CPU scalar multiplies by its reciprocal instead, which can differ in the last bit), so the
    stored bytes do not depend on the device. Quantising here moves 1 byte a key element to the
    CPU instead of 2 and takes the quantisation off the commit.
    """
    keys = keys.float()
    scales = keys.abs().amax(dim=-1)
    scales = scales / torch.full_like(scales, 127.0)
    scales = torch.where(scales > 0, scales, torch.ones_like(scales))
    codes = torch.round(keys / scales.unsqueeze(-1)).clamp_(-127, 127).to(torch.int8)
    return codes, scales


def shift_positions(new_keys: NewKeys, new_codes: NewCodes, offset: int) -> None:
    """Move staged keys and codes by ``offset`` positions, in place: a call scans its documents
    at positions counted from its own first token and commits them after the indexed ones."""
    if offset == 0:
        return
    # New arrays, not in place: one positions array is staged for several fields.
    for f, chunks in new_keys.items():
        new_keys[f] = [(positions + offset, vectors) for positions, vectors in chunks]
    for f, code_chunks in new_codes.items():
        new_codes[f] = [(positions + offset, ids, acts) for positions, ids, acts in code_chunks]
