"""CPU indexing throughput: S3 ``add_documents`` against MiniLM embedding and bm25s, same text.

Text: QMSum meeting transcripts (one document per meeting) from the evaluation data, whole
meetings until ``--tokens`` SmolLM2 tokens. Every side indexes exactly these texts, in one
process, alternately, ``--repeats`` times (the median is reported):

- **S3**: :meth:`S3Retriever.add_documents` into a fresh index (tokenising, the truncated scan,
  SAE encoding, postings, int8 keys, BM25 commit): the bundled SmolLM2-135M and its SAEs;
- **MiniLM**: all-MiniLM-L6-v2 the way a dense RAG index embeds text: each document cut into
  128-word-piece chunks (126 pieces plus [CLS] and [SEP]), embedded in batches of 32 with mean
  pooling and L2 normalisation (:class:`DenseBaseline`), in float32 as users run it by default,
  and in bf16 (the dtype the S3 scan runs in) for a like-for-like kernel comparison;
- **bm25s**: :class:`BM25Baseline` over the same texts.

Throughput is given in each model's own tokens per second; the headline ratio is S3's against
MiniLM's time on the same text. Matmul FLOPs per token come from the model shapes (attention over
each side's own chunks included), so the FLOP ratio and the achieved FLOP rates sit beside the
times. A phase profile of one S3 call (tokenising, forward pass, SAE encoding, commit) follows.

    python -m benchmarks.cpu_indexing --data ../shared/data --tokens 25000 --repeats 3 --threads 2
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, quiet_retriever
from s3_retriever import S3Retriever
from s3_retriever.eval.baselines import BM25Baseline, DenseBaseline
from s3_retriever.index.key_encoding import NewCodes, NewKeys
from s3_retriever.index.scanned import ScannedTexts, commit_scanned
from s3_retriever.model.scan import tokenize

MINILM_CHUNK = 128
MINILM_BATCH = 32  # sentence-transformers' default encode batch size


def meetings(folder: Path, n_tokens: int, tokenizer: Any) -> list[str]:
    """Whole QMSum meetings, in file order, until they hold ``n_tokens`` tokens."""
    texts: list[str] = []
    total = 0
    with open(folder / "qmsum_val" / "val.jsonl") as handle:
        for line in handle:
            turns = json.loads(line)["meeting_transcripts"]
            text = "\n".join(f"{t['speaker']}: {t['content']}" for t in turns)
            texts.append(text)
            total += len(tokenize(tokenizer, text))
            if total >= n_tokens:
                break
    return texts


def minilm_chunks(dense: DenseBaseline, texts: list[str]) -> list[str]:
    """Each text cut into pieces of ``MINILM_CHUNK - 2`` word pieces, at piece boundaries."""
    inner = MINILM_CHUNK - 2
    chunks = []
    for text in texts:
        enc = dense.embedder.tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
        for lo in range(0, len(offsets), inner):
            piece = offsets[lo : lo + inner]
            chunks.append(text[piece[0][0] : piece[-1][1]])
    return chunks


def matmul_flops_per_token(
    layers: float, hidden: int, intermediate: int, ffn_mats: int, kv_width: int, context: float
) -> float:
    """Matmul FLOPs per token of ``layers`` transformer layers (attention over ``context`` keys).

    ``ffn_mats`` is 3 for a gated MLP (gate, up, down) and 2 for a plain one; ``kv_width`` is the
    width of the key and value projections (smaller than ``hidden`` under grouped queries).
    """
    projections = 2 * hidden * hidden + 2 * hidden * kv_width + ffn_mats * hidden * intermediate
    attention = 2 * context * hidden  # scores and weighted values: 2 * context * hidden MACs
    return layers * 2.0 * (projections + attention)


def s3_flops_per_token(retriever: S3Retriever) -> float:
    """Matmul FLOPs per token of the truncated scan plus the SAE encoding."""
    cfg = retriever.model.model.config
    hidden, heads = int(cfg.hidden_size), int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or hidden // heads)
    kv_width = int(cfg.num_key_value_heads) * head_dim
    chunk = retriever.scanner.config.chunk_size
    deepest = retriever.scanner.deepest_layer
    # Full layers before the deepest, a causal chunk (each token sees chunk/2 keys on average),
    # then the deepest layer's query and key projections only.
    full = matmul_flops_per_token(
        deepest, hidden, int(cfg.intermediate_size), 3, kv_width, chunk / 2
    )
    last = 2.0 * hidden * (hidden + kv_width)
    # One SAE encoder matmul per indexed KV head.
    sae = sum(
        2.0 * head_dim * retriever.bundle.saes[layer].config.n_latents
        for layer, _ in retriever.fields
    )
    return full + last + sae


def minilm_flops_per_token(dense: DenseBaseline) -> float:
    cfg = dense.embedder.model.config
    hidden = int(cfg.hidden_size)
    # Bidirectional attention over the whole 128-token chunk.
    return matmul_flops_per_token(
        int(cfg.num_hidden_layers), hidden, int(cfg.intermediate_size), 2, hidden, MINILM_CHUNK
    )


def timed(fn: Callable[[], Any]) -> dict[str, float]:
    """Wall and process CPU seconds of one call."""
    wall, cpu = time.perf_counter(), time.process_time()
    fn()
    return {"wall_s": time.perf_counter() - wall, "cpu_s": time.process_time() - cpu}


def s3_phases(retriever: S3Retriever, texts: list[str]) -> dict[str, float]:
    """One add_documents call cut into its phases, each timed on its own (same work)."""
    scanner, encoder = retriever.scanner, retriever._encoder
    out: dict[str, float] = {}
    start = time.perf_counter()
    tokenized = [tokenize(retriever.model.tokenizer, t) for t in texts]
    out["tokenize_s"] = time.perf_counter() - start
    start = time.perf_counter()
    for _ in scanner.scan_batches(tokenized, progress=False):
        pass
    out["forward_s"] = time.perf_counter() - start
    doc_base = np.concatenate([[0], np.cumsum([len(t) for t in tokenized])[:-1]]).astype(np.int64)
    keys: NewKeys = {f: [] for f in retriever.fields}
    codes: NewCodes = {f: [] for f in retriever.fields}
    start = time.perf_counter()
    encoder.run(scanner.scan_batches(tokenized, progress=False), doc_base, keys, codes)
    out["sae_encoding_s"] = time.perf_counter() - start - out["forward_s"]
    scanned = ScannedTexts(list(texts), tokenized, keys, codes)
    start = time.perf_counter()
    fresh = S3Retriever(retriever.model, retriever.bundle, retriever.config)
    commit_scanned(fresh.index, scanned, [str(i) for i in range(len(texts))], [{}] * len(texts))
    out["commit_s"] = time.perf_counter() - start
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--tokens", type=int, default=25_000, help="SmolLM2 tokens of text")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2, help="torch threads")
    parser.add_argument("--name", default="cpu_indexing", help="result file name")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    retriever = quiet_retriever()
    texts = meetings(data_dir(args.data), args.tokens, retriever.model.tokenizer)
    dense = DenseBaseline(batch_size=MINILM_BATCH)
    dense.embed(["warm-up"])  # loads the model outside the timing
    dense_bf16 = DenseBaseline(batch_size=MINILM_BATCH)
    dense_bf16.embed(["warm-up"])
    dense_bf16.embedder.model.to(torch.bfloat16)

    def s3_side() -> int:
        fresh = S3Retriever(retriever.model, retriever.bundle, retriever.config)
        fresh.add_documents(texts)
        return fresh.index.n_positions

    def minilm_side(model: DenseBaseline) -> Callable[[], int]:
        def run() -> int:
            chunks = minilm_chunks(model, texts)
            return len(model.embed(chunks))

        return run

    sides: dict[str, Callable[[], Any]] = {
        "s3": s3_side,
        "minilm_fp32": minilm_side(dense),
        "minilm_bf16": minilm_side(dense_bf16),
        "bm25s": lambda: BM25Baseline().add_documents(list(texts)),
    }
    s3_tokens = s3_side()  # warm-up: first calls allocate and pack weights
    for side in list(sides)[1:]:
        sides[side]()
    minilm_pieces = sum(
        len(dense.embedder.tokenizer(c, add_special_tokens=True)["input_ids"])
        for c in minilm_chunks(dense, texts)
    )
    runs: dict[str, list[dict[str, float]]] = {side: [] for side in sides}
    for _ in range(args.repeats):
        for side, fn in sides.items():
            runs[side].append(timed(fn))
            print(side, runs[side][-1], flush=True)

    def median(side: str, key: str = "wall_s") -> float:
        return statistics.median(r[key] for r in runs[side])

    tokens = {"s3": s3_tokens, "minilm_fp32": minilm_pieces, "minilm_bf16": minilm_pieces}
    flops = {
        "s3": s3_flops_per_token(retriever),
        "minilm_fp32": minilm_flops_per_token(dense),
        "minilm_bf16": minilm_flops_per_token(dense),
    }
    summary: dict[str, Any] = {
        side: {
            "median_wall_s": median(side),
            "median_cpu_s": median(side, "cpu_s"),
            "tokens": tokens.get(side, s3_tokens),
            "tok_s": tokens.get(side, s3_tokens) / median(side),
            "gflop_per_s": flops[side] * tokens[side] / median(side) / 1e9
            if side in flops
            else None,
            "mflop_per_token": flops[side] / 1e6 if side in flops else None,
        }
        for side in sides
    }
    phases = s3_phases(retriever, texts)
    ratio_fp32 = median("minilm_fp32") / median("s3")
    ratio_bf16 = median("minilm_bf16") / median("s3")
    flop_ratio = flops["s3"] * s3_tokens / (flops["minilm_fp32"] * minilm_pieces)
    rows = [
        [
            label,
            f"{summary[side]['tokens']:,}",
            f"{summary[side]['median_wall_s']:.2f}",
            f"{summary[side]['median_cpu_s']:.2f}",
            f"{summary[side]['tok_s']:,.0f}",
            "" if summary[side]["gflop_per_s"] is None else f"{summary[side]['gflop_per_s']:.0f}",
            f"{median(side) / median('s3'):.2f}",
        ]
        for side, label in (
            ("s3", "S3 add_documents (SmolLM2-135M, bf16)"),
            ("minilm_fp32", "MiniLM-L6 embedding, fp32 (default)"),
            ("minilm_bf16", "MiniLM-L6 embedding, bf16"),
            ("bm25s", "bm25s indexing"),
        )
    ]
    table = markdown_table(
        [
            "indexer",
            "tokens (own tokenizer)",
            "wall s (median)",
            "CPU s (median)",
            "tok/s",
            "matmul GFLOP/s",
            "time / S3's time",
        ],
        rows,
    )
    table += (
        f"\n\nS3 / MiniLM fp32 throughput on the same text: **{ratio_fp32:.2f}x**; against MiniLM "
        f"bf16: {ratio_bf16:.2f}x. Matmul FLOPs of the whole text, S3 / MiniLM: {flop_ratio:.2f}x "
        f"({summary['s3']['mflop_per_token']:.1f} against "
        f"{summary['minilm_fp32']['mflop_per_token']:.1f} MFLOP per token).\n\n"
        + markdown_table(
            ["S3 phase (one call)", "seconds"], [[k, f"{v:.2f}"] for k, v in phases.items()]
        )
    )
    write_result(
        args.name,
        {
            "settings": vars(args),
            "documents": len(texts),
            "characters": sum(len(t) for t in texts),
            "runs": runs,
            "summary": summary,
            "s3_over_minilm_fp32": ratio_fp32,
            "s3_over_minilm_bf16": ratio_bf16,
            "flop_ratio_s3_over_minilm": flop_ratio,
            "s3_phases": phases,
            "load_average_1min": round(os.getloadavg()[0], 2),
        },
        table,
    )


if __name__ == "__main__":
    main()
