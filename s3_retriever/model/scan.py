"""Streaming scan: tokenise with character offsets, run independent chunks, capture projections.

S3 step 1: the context is read once, in independent chunks, and no KV cache survives a chunk.
Forward hooks on ``self_attn.q_proj`` / ``k_proj`` capture *pre-RoPE* projections, which are
position-free: what matching a question against far-away context needs. The forward pass is cut
off right after the deepest instrumented projection, so the layers after it cost nothing.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from s3_retriever.console import Progress, progress_bar
from s3_retriever.model.fused_forward import (
    FusedDecoder,
    fused_decoder,
    fused_unsupported_reason,
)
from s3_retriever.model.loading import attention_shape, decoder_layers

# Tokenising a multi-megabyte string in one call builds millions of Python offset tuples at once;
# pieces of this many characters keep that transient memory flat.
_TOKENIZE_PIECE_CHARS = 200_000
# Pieces given to the tokenizer in one call (a fast tokenizer encodes them in parallel); the
# transient memory is that of this many pieces.
_TOKENIZE_PIECES_PER_CALL = 16
# A fast tokenizer resets its padding and truncation state on every call, and two threads doing
# that at once can fail ("Already borrowed", huggingface/tokenizers#537). Each call already uses
# every core, so taking turns costs nothing.
_TOKENIZER_LOCK = threading.Lock()


@dataclass(frozen=True)
class ScanConfig:
    """How documents are read by the model."""

    chunk_size: int = 1024
    """Tokens per independent chunk (the paper used 4,096). No KV cache crosses a chunk."""
    batch_size: int = 4
    """Chunks run together in one forward pass; peak memory grows with chunk_size x batch_size."""
    add_bos: bool = True
    """Prepend the tokenizer's BOS token to every chunk and question, so the first real token is
    not the attention sink. The BOS position itself is never indexed."""
    show_progress: bool | None = None
    """Progress bar for scans of more than one batch: ``None`` only when stderr is a terminal,
    ``True`` always, ``False`` never (see :mod:`s3_retriever.console`)."""
    fused_forward: bool = True
    """On a CPU, run Llama, Mistral and Qwen2 models through the leaner forward pass of
    :mod:`s3_retriever.model.fused_forward` (same projections, fewer passes over memory; keys
    agree with the model's own forward to bf16 rounding). ``False``, other architectures and
    other devices use the model's own forward with hooks. It never changes what is indexed
    beyond rounding, so indexes built either way search alike."""

    def __post_init__(self) -> None:
        if self.chunk_size < 8:
            raise ValueError(f"chunk_size must be at least 8 tokens, got {self.chunk_size}")
        if self.batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {self.batch_size}")


@dataclass(frozen=True)
class TokenizedText:
    """A text's token ids with exact character offsets into the original string."""

    input_ids: np.ndarray
    """int64 token ids."""
    starts: np.ndarray
    """int64 start character of each token."""
    ends: np.ndarray
    """int64 end character of each token."""

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])


def tokenize(tokenizer: Any, text: str) -> TokenizedText:
    """Tokenise without special tokens, keeping character offsets, in bounded pieces."""
    return tokenize_many(tokenizer, [text])[0]


def tokenize_many(tokenizer: Any, texts: Sequence[str]) -> list[TokenizedText]:
    """:func:`tokenize` of every text, the pieces of several texts sharing each tokenizer call.

    Each text is cut into the same pieces as on its own, so the tokens are those of
    :func:`tokenize`; only the calls are shared. A 32k-token document is a single piece, so
    tokenising documents one call each keeps a fast tokenizer on one core; on a 16-core GPU host
    that cost 1.3 s per 16 such documents against 0.46 s with shared calls, beside an 8.5 s scan
    (docs/results/bench_gpu_ray_scan.md).
    """
    pieces = [
        (index, start, end)
        for index, text in enumerate(texts)
        for start, end in _pieces(text, _TOKENIZE_PIECE_CHARS)
    ]
    ids: list[list[np.ndarray]] = [[] for _ in texts]
    starts: list[list[np.ndarray]] = [[] for _ in texts]
    ends: list[list[np.ndarray]] = [[] for _ in texts]
    for group_start in range(0, len(pieces), _TOKENIZE_PIECES_PER_CALL):
        group = pieces[group_start : group_start + _TOKENIZE_PIECES_PER_CALL]
        # One call for several pieces: a fast tokenizer encodes a batch on all cores.
        with _TOKENIZER_LOCK:
            enc = tokenizer(
                [texts[index][start:end] for index, start, end in group],
                add_special_tokens=False,
                return_offsets_mapping=True,
            )
        for row, (index, piece_start, _) in enumerate(group):
            offsets = np.asarray(enc["offset_mapping"][row], dtype=np.int64).reshape(-1, 2)
            ids[index].append(np.asarray(enc["input_ids"][row], dtype=np.int64))
            starts[index].append(offsets[:, 0] + piece_start)
            ends[index].append(offsets[:, 1] + piece_start)
    empty = np.zeros(0, dtype=np.int64)
    return [
        TokenizedText(np.concatenate(i), np.concatenate(s), np.concatenate(e))
        if i
        else TokenizedText(empty, empty, empty)
        for i, s, e in zip(ids, starts, ends, strict=True)
    ]


def _pieces(text: str, size: int) -> Iterator[tuple[int, int]]:
    """Cut ``text`` into pieces of about ``size`` characters, at whitespace where possible."""
    start = 0
    while start < len(text):
        end = min(len(text), start + size)
        if end < len(text):
            cut = text.rfind("\n", start + size // 2, end)
            if cut < 0:
                cut = text.rfind(" ", start + size // 2, end)
            if cut > start:
                end = cut
        yield start, end
        start = end


@dataclass
class ChunkCapture:
    """Projections captured for one chunk of one document."""

    doc_index: int
    """Index of the document in the list given to :meth:`Scanner.scan`."""
    token_start: int
    """Index of the chunk's first token within that document's tokens."""
    keys: dict[int, torch.Tensor] = field(default_factory=dict)
    """layer -> float32 pre-RoPE keys, shape (tokens, kv_heads, head_dim)."""
    queries: dict[int, torch.Tensor] = field(default_factory=dict)
    """layer -> float32 pre-RoPE queries, shape (tokens, query_heads, head_dim)."""


@dataclass
class BatchCapture:
    """Projections of one batch of chunks, as the model produced them (its device and dtype)."""

    items: list[tuple[int, int, int]]
    """(doc_index, token_start, token_end) of each row of the batch."""
    offset: int
    """Columns before each row's first real token (1 when BOS is prepended, else 0)."""
    keys: dict[int, torch.Tensor]
    """layer -> flat pre-RoPE keys, shape (rows, width, kv_heads * head_dim); padded rows."""
    queries: dict[int, torch.Tensor]
    """layer -> flat pre-RoPE queries, shape (rows, width, query_heads * head_dim)."""


class _StopForward(Exception):
    """Raised by the last hook: nothing after the deepest instrumented projection is needed."""


class Scanner:
    """Runs a causal LM over token chunks and captures pre-RoPE projections at chosen layers."""

    def __init__(
        self,
        model: Any,
        key_layers: Sequence[int],
        query_layers: Sequence[int] = (),
        config: ScanConfig | None = None,
        bos_token_id: int | None = None,
    ) -> None:
        self.model = model
        self.config = config or ScanConfig()
        n_layers, self.n_heads, self.n_kv_heads, self.head_dim = attention_shape(model)
        for layer in (*key_layers, *query_layers):
            if not 0 <= layer < n_layers:
                raise ValueError(f"layer {layer} does not exist; the model has {n_layers} layers")
        self.key_layers = tuple(sorted(set(key_layers)))
        self.query_layers = tuple(sorted(set(query_layers)))
        self.bos_token_id = bos_token_id if self.config.add_bos else None
        self._layers = decoder_layers(model)
        self.device: torch.device = next(model.parameters()).device
        self.fused: FusedDecoder | None = None
        """The lean CPU forward pass when ``config.fused_forward`` applies, else None."""
        width = self.config.chunk_size + 1
        if (
            self.config.fused_forward
            and (self.key_layers or self.query_layers)
            and self.device.type == "cpu"
            and fused_unsupported_reason(model, width) is None
        ):
            self.fused = fused_decoder(model, self.deepest_layer)

    @property
    def deepest_layer(self) -> int:
        return max((*self.key_layers, *self.query_layers))

    def _forward(
        self, batch: torch.Tensor, mask: torch.Tensor | None, want_keys: bool, want_queries: bool
    ) -> tuple[dict[int, torch.Tensor], dict[int, torch.Tensor]]:
        """One truncated forward pass; returns (keys, queries) per layer, batch-first."""
        keys: dict[int, torch.Tensor] = {}
        queries: dict[int, torch.Tensor] = {}
        key_layers = self.key_layers if want_keys else ()
        query_layers = self.query_layers if want_queries else ()
        if self.fused is not None:
            # No hooks: the lean pass returns the projections itself (and pads need no mask).
            return self.fused.forward(batch, key_layers, query_layers)
        last = max((*key_layers, *query_layers))
        # q_proj runs before k_proj in every supported attention block, so the last needed
        # projection is k_proj of the last layer if it wants keys, else its q_proj.
        stop_on_key = last in key_layers
        handles = []
        # Hooks live on the shared model: another thread's forward pass (a second retriever on
        # the same model) would fire them too, so each acts only for the thread that set it.
        owner = threading.get_ident()

        def keep(store: dict[int, torch.Tensor], layer: int, stop: bool) -> Any:
            def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> None:
                if threading.get_ident() != owner:
                    return
                store[layer] = output.detach()
                if stop:
                    raise _StopForward

            return hook

        try:
            for layer in query_layers:
                stop = layer == last and not stop_on_key
                attn = self._layers[layer].self_attn
                handles.append(attn.q_proj.register_forward_hook(keep(queries, layer, stop)))
            for layer in key_layers:
                stop = layer == last
                attn = self._layers[layer].self_attn
                handles.append(attn.k_proj.register_forward_hook(keep(keys, layer, stop)))
            base = getattr(self.model, "model", self.model)
            with torch.inference_mode(), contextlib.suppress(_StopForward):
                base(input_ids=batch, attention_mask=mask, use_cache=False)
        finally:
            for handle in handles:
                handle.remove()
        return keys, queries

    def _prepare(
        self, pieces: Sequence[np.ndarray]
    ) -> tuple[torch.Tensor, torch.Tensor | None, int]:
        """Right-pad token pieces into one batch, with BOS in front when configured.

        The mask is ``None`` when no row is padded: the model then takes its plain causal path
        (flash attention on a GPU) instead of building and checking a padding mask.
        """
        offset = 1 if self.bos_token_id is not None else 0
        width = max(len(p) for p in pieces) + offset
        batch = torch.zeros((len(pieces), width), dtype=torch.long)
        mask = torch.zeros((len(pieces), width), dtype=torch.long)
        for row, piece in enumerate(pieces):
            if self.bos_token_id is not None:
                batch[row, 0] = int(self.bos_token_id)
            batch[row, offset : offset + len(piece)] = torch.from_numpy(piece)
            mask[row, : offset + len(piece)] = 1
        padded = any(len(p) + offset < width for p in pieces)
        if self.device.type == "cuda":
            # Pinned host memory lets the copy run while the GPU still works on the last batch.
            batch = batch.pin_memory().to(self.device, non_blocking=True)
            mask = mask.pin_memory().to(self.device, non_blocking=True)
        else:
            batch, mask = batch.to(self.device), mask.to(self.device)
        return batch, (mask if padded else None), offset

    def scan_batches(
        self,
        docs: Sequence[TokenizedText],
        want_queries: bool = False,
        desc: str = "scanning",
        progress: Progress = None,
    ) -> Iterator[BatchCapture]:
        """Yield each batch's projections, still on the model's device, one batch at a time.

        ``progress`` overrides ``config.show_progress`` for this scan when not ``None`` (a
        caller with its own bar passes ``False``).

        Nothing here waits for the device: on a GPU the projections may still be being computed
        when they are yielded, so a consumer can queue its own work on them straight away.
        """
        size = self.config.chunk_size
        work = [
            (doc_index, start, min(start + size, len(doc)))
            for doc_index, doc in enumerate(docs)
            for start in range(0, len(doc), size)
        ]
        # Longest first: full chunks batch together and the short tails pad little.
        work.sort(key=lambda item: item[1] - item[2])
        batches = [
            work[i : i + self.config.batch_size]
            for i in range(0, len(work), self.config.batch_size)
        ]
        switch = self.config.show_progress if progress is None else progress
        bar = None
        if len(batches) > 1:
            total = sum(len(doc) for doc in docs)
            bar = progress_bar(total, desc, "tok", switch, leave=False)
        try:
            for items in batches:
                pieces = [docs[d].input_ids[s:e] for d, s, e in items]
                batch, mask, offset = self._prepare(pieces)
                keys, queries = self._forward(batch, mask, True, want_queries)
                yield BatchCapture(items=items, offset=offset, keys=keys, queries=queries)
                if bar is not None:
                    bar.update(sum(e - s for _, s, e in items))
        finally:
            if bar is not None:
                bar.close()

    def scan(
        self, docs: Sequence[TokenizedText], want_queries: bool = False, desc: str = "scanning"
    ) -> Iterator[ChunkCapture]:
        """Yield float32 keys (and queries) chunk by chunk, on the model's device.

        Memory is bounded by one batch.
        """
        for captured in self.scan_batches(docs, want_queries, desc):
            for row, (doc_index, start, end) in enumerate(captured.items):
                span = slice(captured.offset, captured.offset + end - start)
                yield ChunkCapture(
                    doc_index=doc_index,
                    token_start=start,
                    keys={
                        layer: self._heads(k[row, span], self.n_kv_heads)
                        for layer, k in captured.keys.items()
                    },
                    queries={
                        layer: self._heads(q[row, span], self.n_heads)
                        for layer, q in captured.queries.items()
                    },
                )

    def project_queries(self, token_ids: np.ndarray) -> dict[int, torch.Tensor]:
        """Pre-RoPE query vectors of one short text (a question): layer -> (tokens, heads, dim).

        Returned as float32 CPU tensors, whatever device the model is on.

        The question is read as one chunk, exactly as a document chunk would be.
        """
        if not self.query_layers:
            raise ValueError("this scanner was built without query layers")
        ids = token_ids[-self.config.chunk_size :]
        batch, mask, offset = self._prepare([ids])
        _, queries = self._forward(batch, mask, False, True)
        return {
            layer: self._heads(q[0, offset : offset + len(ids)], self.n_heads).cpu()
            for layer, q in queries.items()
        }

    def _heads(self, flat: torch.Tensor, n_heads: int) -> torch.Tensor:
        return flat.float().reshape(flat.shape[0], n_heads, self.head_dim)
