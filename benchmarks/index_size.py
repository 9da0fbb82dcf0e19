"""Index size in bytes per token against the model's bf16 KV cache, and what compact postings cost.

Three parts, all in one run:

1. From shapes: the index of an 8B Llama-3.x architecture and of the bundled SmolLM2-135M with
   default settings, against a bf16 cache of all layers' K and V. Postings bytes use the gap
   size measured in part 2 (same dictionary size and k, so the same mean gap).
2. Measured: HotpotQA haystacks indexed by the bundled model with each SAE bundle; bytes on disk
   per token, by part, and the same postings in the previous encoding (int32 positions, float16
   activations: format 1) for the ratio.
3. Retrieval with the compact encoding against the previous one on the same index: evidence
   recall of S3-Pure with the ``aligned`` scorer (the one that reads postings) at three budgets.

    python -m benchmarks.index_size --n 40 [--sae-k4 runs/sae_k4]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.common import markdown_table, write_result
from benchmarks.real_corpus import data_dir, haystacks, quiet_retriever
from s3_retriever import S3Retriever, ScoringConfig
from s3_retriever.eval.data import EvalExample
from s3_retriever.eval.metrics import evidence_recall
from s3_retriever.index.postings import Postings

BUDGETS = (256, 512, 1024)
V1_BYTES_PER_POSTING = 4 + 2  # int32 position + float16 activation


@dataclass(frozen=True)
class Architecture:
    """The attention shapes that size a KV cache and an index."""

    name: str
    n_layers: int
    n_heads: int
    n_kv_heads: int
    head_dim: int

    def kv_cache_bytes(self) -> int:
        """bf16 K and V of every layer and KV head, per token."""
        return self.n_layers * self.n_kv_heads * self.head_dim * 2 * 2


LLAMA_8B = Architecture("Llama-3.1-8B", 32, 32, 8, 128)
SMOLLM2 = Architecture("SmolLM2-135M", 30, 9, 3, 64)


def field_bytes(head_dim: int, k: int, gap_bytes: float, keys: bool, postings: bool) -> float:
    """Bytes per token of one (layer, KV head) field: int8 key + float32 scale + the uint16
    cluster id a large index keeps for its clustered search, and k postings of a varint gap and a
    uint8 activation each."""
    return (head_dim + 4 + 2 if keys else 0) + (k * (gap_bytes + 1) if postings else 0)


def from_shapes(gap_bytes: float, k: int) -> list[dict[str, Any]]:
    """Bytes per token and ratio to the KV cache for default and alternative settings."""
    rows = []
    for arch in (LLAMA_8B, SMOLLM2):
        layouts = {
            "3 retrieval heads on 3 KV heads (shipped recipe)": 3,
            f"no measured heads: all {arch.n_heads} heads of one layer "
            f"({arch.n_kv_heads} KV heads)": arch.n_kv_heads,
        }
        for layout, n_fields in layouts.items():
            for stores, keys, postings in (
                ("keys + postings (default)", True, True),
                ("postings only", False, True),
                ("keys only", True, False),
            ):
                per_token = n_fields * field_bytes(arch.head_dim, k, gap_bytes, keys, postings)
                rows.append(
                    {
                        "architecture": arch.name,
                        "fields": layout,
                        "stores": stores,
                        "kv_cache_bytes_per_token": arch.kv_cache_bytes(),
                        "index_bytes_per_token": round(per_token, 1),
                        "kv_cache_over_index": round(arch.kv_cache_bytes() / per_token, 1),
                    }
                )
    return rows


def disk_bytes(folder: Path) -> dict[str, int]:
    parts = {
        "keys": 0,
        "key clusters": 0,
        "postings": 0,
        "corpus tables": 0,
        "documents.json": 0,
        "sae": 0,
    }
    for path in folder.rglob("*"):
        if not path.is_file():
            continue
        top = path.relative_to(folder).parts[0]
        name = {"corpus": "corpus tables", "clusters": "key clusters"}.get(top, top)
        if name in parts:
            parts[name] += path.stat().st_size
    return parts


def index_haystacks(retriever: S3Retriever, examples: Sequence[EvalExample]) -> None:
    """One index of every haystack; each question is later filtered to its own haystack."""
    for i, example in enumerate(examples):
        retriever.add_documents(example.documents, ids=example.doc_ids, metadatas=[{"haystack": i}])


def _compact_copy(retriever: S3Retriever) -> dict[Any, Postings]:
    """Compact postings with the same positions, encoded from the retriever's float16 ones
    (what loading a format-1 index does)."""
    compact = {}
    for field_key, postings in retriever.index.postings.items():
        positions, acts = postings.decode()
        ids = np.repeat(np.arange(postings.n_latents), postings.doc_freq())
        encoded = Postings(postings.n_latents)
        encoded.append(positions.astype(np.int64), ids[:, None], acts[:, None])
        encoded.flush()
        compact[field_key] = encoded
    return compact


def _recall(retriever: S3Retriever, examples: Sequence[EvalExample], scorer: str) -> dict[str, Any]:
    search = dataclasses.replace(
        retriever.config.search_settings(),
        scoring=ScoringConfig(scorer=scorer),  # type: ignore[arg-type]
    )
    per_budget: dict[int, list[float]] = {b: [] for b in BUDGETS}
    hits_seen = []
    for i, example in enumerate(examples):
        for budget in BUDGETS:
            hits = retriever.retrieve(
                example.question,
                token_budget=budget,
                mode="s3",
                filters={"haystack": [i]},
                search=search,
            )
            ranges = [(0, h.start_char, h.end_char) for h in hits]
            per_budget[budget].append(evidence_recall(ranges, example.gold))
            hits_seen.append([h.id for h in hits])
    return {
        "recall": {str(b): float(np.mean(v)) for b, v in per_budget.items()},
        "per_question": {str(b): v for b, v in per_budget.items()},
        "hits": hits_seen,
    }


def measure(sae_path: str | None, examples: Sequence[EvalExample]) -> dict[str, Any]:
    """Index the haystacks once (float16 postings), derive the compact ones, size and compare."""
    retriever = quiet_retriever(sae_path)
    retriever.index.postings = {
        f: Postings(p.n_latents, exact_activations=True)
        for f, p in retriever.index.postings.items()
    }
    index_haystacks(retriever, examples)
    n_tokens = retriever.index.corpus.n_positions
    float16_postings = retriever.index.postings
    compact_postings = _compact_copy(retriever)
    retriever.index.postings = compact_postings
    with tempfile.TemporaryDirectory() as tmp:
        retriever.save(Path(tmp) / "index")
        disk = disk_bytes(Path(tmp) / "index")
    n_postings = sum(int(p.indptr[-1]) for p in compact_postings.values())
    gap_bytes = sum(len(p.position_bytes) for p in compact_postings.values()) / n_postings
    v1_postings = sum(
        p.indptr.nbytes + V1_BYTES_PER_POSTING * int(p.indptr[-1])
        for p in compact_postings.values()
    )
    sae = next(iter(retriever.bundle.saes.values())).config
    n_fields = len(retriever.fields)
    head_dim = sae.d_in
    compact = _recall(retriever, examples, "aligned")
    retriever.index.postings = float16_postings
    previous = _recall(retriever, examples, "aligned")
    exact = _recall(retriever, examples, "exact")
    same_hits = np.mean([a == b for a, b in zip(compact["hits"], previous["hits"], strict=True)])
    index_bytes = disk["keys"] + disk["key clusters"] + disk["postings"] + disk["corpus tables"]
    return {
        "sae": sae_path or "shipped",
        "k": sae.k,
        "n_latents": sae.n_latents,
        "n_fields": n_fields,
        "n_tokens": n_tokens,
        "n_haystacks": len(examples),
        "disk_bytes": disk,
        "bytes_per_token": {name: size / n_tokens for name, size in disk.items()},
        "index_bytes_per_token": index_bytes / n_tokens,
        "kv_cache_bytes_per_token": SMOLLM2.kv_cache_bytes(),
        "kv_cache_over_index": SMOLLM2.kv_cache_bytes() * n_tokens / index_bytes,
        "mean_gap_bytes": gap_bytes,
        "postings_bytes_per_token_per_field": disk["postings"] / n_tokens / n_fields,
        "format1_postings_bytes_per_token_per_field": v1_postings / n_tokens / n_fields,
        "bf16_keys_bytes_per_token_per_field": 2 * head_dim,
        "bf16_keys_over_postings": 2 * head_dim * n_tokens * n_fields / disk["postings"],
        "recall_aligned_compact": compact["recall"],
        "recall_aligned_float16": previous["recall"],
        "recall_exact": exact["recall"],
        "identical_hit_lists": float(same_hits),
        "per_question": {
            "aligned_compact": compact["per_question"],
            "aligned_float16": previous["per_question"],
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=None, help="evaluation data folder")
    parser.add_argument("--n", type=int, default=40, help="HotpotQA haystacks to index")
    parser.add_argument("--words", type=int, default=3000, help="words per haystack")
    parser.add_argument("--sae-k4", default=None, help="a k=4 SAE bundle to measure as well")
    args = parser.parse_args()
    examples = haystacks(data_dir(args.data), args.n, args.words)
    measured = [measure(None, examples)]
    if args.sae_k4:
        measured.append(measure(args.sae_k4, examples))
    shipped = measured[0]
    shapes = from_shapes(shipped["mean_gap_bytes"], shipped["k"])
    payload = {
        "settings": vars(args),
        "from_shapes": shapes,
        "measured": measured,
    }
    shape_table = markdown_table(
        ["architecture", "fields", "stores", "index B/token", "KV cache B/token", "KV / index"],
        [
            [
                r["architecture"],
                r["fields"],
                r["stores"],
                r["index_bytes_per_token"],
                r["kv_cache_bytes_per_token"],
                f"{r['kv_cache_over_index']:.0f}x",
            ]
            for r in shapes
        ],
    )
    measured_table = markdown_table(
        [
            "SAE",
            "tokens",
            "keys B/tok",
            "key clusters B/tok",
            "postings B/tok",
            "tables B/tok",
            "KV / index",
            "postings B/tok/field (format 1)",
            "bf16 keys / postings",
        ],
        [
            [
                f"k={m['k']} ({m['sae']})",
                m["n_tokens"],
                m["bytes_per_token"]["keys"],
                m["bytes_per_token"]["key clusters"],
                m["bytes_per_token"]["postings"],
                m["bytes_per_token"]["corpus tables"],
                f"{m['kv_cache_over_index']:.0f}x",
                f"{m['postings_bytes_per_token_per_field']:.1f} "
                f"({m['format1_postings_bytes_per_token_per_field']:.1f})",
                f"{m['bf16_keys_over_postings']:.1f}x",
            ]
            for m in measured
        ],
    )
    recall_rows = []
    for m in measured:
        for name, key in (
            ("aligned, compact postings", "recall_aligned_compact"),
            ("aligned, float16 activations (format 1)", "recall_aligned_float16"),
            ("exact (stored keys)", "recall_exact"),
        ):
            recall_rows.append([f"k={m['k']}", name, *(m[key][str(b)] for b in BUDGETS)])
    recall_table = markdown_table(["SAE", "scorer", *(f"recall@{b}" for b in BUDGETS)], recall_rows)
    same = ", ".join(f"k={m['k']}: {m['identical_hit_lists']:.0%}" for m in measured)
    table = (
        "From shapes (postings at the measured "
        f"{shipped['mean_gap_bytes']:.2f} bytes a gap, k={shipped['k']}):\n\n{shape_table}\n\n"
        f"Measured on {shipped['n_haystacks']} HotpotQA haystacks, bundled SmolLM2-135M "
        f"(KV cache {SMOLLM2.kv_cache_bytes()} B/token):\n\n{measured_table}\n\n"
        f"S3-Pure evidence recall, compact against format-1 postings (identical hit lists: "
        f"{same}):\n\n{recall_table}"
    )
    write_result("index_size", payload, table)


if __name__ == "__main__":
    main()
