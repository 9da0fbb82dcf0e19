"""CPU scan throughput: S3 indexing against a plain full forward pass over the same text.

The peer is ``model(input_ids=...)`` over exactly the chunks the scan reads (same chunk size,
batch, BOS, dtype, SDPA): what any use of the model would pay to read the text once. The S3 side is
the whole :meth:`S3Retriever.add_documents` path: tokenising, the truncated scan, SAE encoding, and
the postings and keys committed to the index. Both run alternately in one process, ``--repeats``
times each, so load on the machine hits both; the figure is the ratio of medians.

    python -m benchmarks.scan_throughput
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, markdown_table, write_result
from s3_retriever import RetrieverConfig, S3Retriever, SAEBundle, ScanConfig
from s3_retriever.model.loading import LoadedModel, cache_dir, load_model
from s3_retriever.model.scan import tokenize
from s3_retriever.sae.bundle import SAEConfig, TopKSAE, shipped_bundle_dir

ROOT = Path(__file__).resolve().parent.parent
QWEN_FOLDER_PREFIX = "Qwen2.5-Coder-0.5B-Instruct"


def corpus_text(n_tokens: int, tokenizer: Any) -> str:
    """The project's own docs and sources, repeated until the text holds ``n_tokens`` tokens."""
    files = sorted([*ROOT.glob("*.md"), *ROOT.glob("docs/*.md"), *ROOT.glob("s3_retriever/*.py")])
    base = "\n\n".join(p.read_text(encoding="utf-8") for p in files)
    per_copy = max(1, len(tokenize(tokenizer, base)))
    text = "\n\n".join([base] * (n_tokens // per_copy + 1))
    cut = tokenize(tokenizer, text)
    return text[: int(cut.ends[min(n_tokens, len(cut)) - 1])]


def random_bundle(loaded: LoadedModel, layers: Sequence[int], n_latents: int, k: int) -> SAEBundle:
    """Random SAEs of the model's head size: scan speed does not depend on their values."""
    cfg = loaded.model.config
    n_heads = int(cfg.num_attention_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    generator = torch.Generator().manual_seed(0)
    saes = {}
    for layer in layers:
        sae = TopKSAE(SAEConfig(d_in=head_dim, n_latents=n_latents, k=k))
        with torch.no_grad():
            sae.W_enc.copy_(torch.randn(n_latents, head_dim, generator=generator))
            sae.W_dec.copy_(torch.nn.functional.normalize(sae.W_enc, dim=-1))
        saes[layer] = sae.eval().requires_grad_(False)
    means = {layer: torch.zeros(n_heads, head_dim) for layer in layers}
    return SAEBundle(loaded.model_id, saes, means)


def full_forward(loaded: LoadedModel, text: str, scan: ScanConfig) -> int:
    """``model(input_ids)`` over the scan's chunks and batches; returns tokens read."""
    ids = tokenize(loaded.tokenizer, text).input_ids
    bos = loaded.tokenizer.bos_token_id if scan.add_bos else None
    chunks = [ids[i : i + scan.chunk_size] for i in range(0, len(ids), scan.chunk_size)]
    chunks.sort(key=len, reverse=True)
    for start in range(0, len(chunks), scan.batch_size):
        group = chunks[start : start + scan.batch_size]
        prefix = [] if bos is None else [bos]
        width = max(len(c) for c in group) + len(prefix)
        batch = torch.zeros((len(group), width), dtype=torch.long)
        mask = torch.zeros((len(group), width), dtype=torch.long)
        for row, chunk in enumerate(group):
            row_ids = torch.tensor([*prefix, *chunk.tolist()])
            batch[row, : len(row_ids)] = row_ids
            mask[row, : len(row_ids)] = 1
        with torch.inference_mode():
            loaded.model(input_ids=batch, attention_mask=mask)
    return len(ids)


def s3_index(loaded: LoadedModel, bundle: SAEBundle, config: RetrieverConfig, text: str) -> int:
    retriever = S3Retriever(loaded, bundle, config)
    retriever.add_documents([text])
    return retriever.index.corpus.n_positions


def timed(fn: Callable[[], int]) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_model(
    name: str, loaded: LoadedModel, bundle: SAEBundle, args: argparse.Namespace
) -> list[dict[str, Any]]:
    text = corpus_text(args.tokens, loaded.tokenizer)
    n_tokens = len(tokenize(loaded.tokenizer, text))
    base = RetrieverConfig(scan=ScanConfig(show_progress=False))
    variants: dict[str, RetrieverConfig] = {"default": base}
    for batch in args.batch_sizes:
        scan = ScanConfig(batch_size=batch, show_progress=False)
        variants[f"batch {batch}"] = base.replace(scan=scan)
    rows = []
    for label, config in variants.items():
        full_forward(loaded, text, config.scan)  # warm-up: first calls allocate and pack weights
        s3_index(loaded, bundle, config, text)
        peer, ours = [], []
        for _ in range(args.repeats):
            peer.append(timed(lambda c=config: full_forward(loaded, text, c.scan)))
            ours.append(timed(lambda c=config: s3_index(loaded, bundle, c, text)))
        row = {
            "model": name,
            "variant": label,
            "sae_k": next(iter(bundle.saes.values())).config.k,
            "key_coding": bundle.key_coding,
            "chunk_size": config.scan.chunk_size,
            "batch_size": config.scan.batch_size,
            "tokens": n_tokens,
            "forward_seconds": peer,
            "s3_seconds": ours,
            "forward_tok_s": n_tokens / statistics.median(peer),
            "s3_tok_s": n_tokens / statistics.median(ours),
        }
        row["ratio"] = row["s3_tok_s"] / row["forward_tok_s"]
        print(
            f"{name} {label}: S3 {row['s3_tok_s']:,.0f} tok/s, forward "
            f"{row['forward_tok_s']:,.0f} tok/s, ratio {row['ratio']:.2f}",
            flush=True,
        )
        rows.append(row)
    return rows


def models(args: argparse.Namespace) -> list[tuple[str, LoadedModel, SAEBundle]]:
    loaded = load_model(None, dtype=args.dtype)
    sae = args.sae or shipped_bundle_dir(loaded.model_id)
    out = [(loaded.model_id, loaded, SAEBundle.load(sae))]
    qwen = sorted((cache_dir() / "models").glob(f"{QWEN_FOLDER_PREFIX}*"))
    if args.qwen and qwen:
        loaded = load_model(qwen[0], dtype=args.dtype)
        n_layers = int(loaded.model.config.num_hidden_layers)
        # No SAE bundle ships for this model: random SAEs at the retriever's fallback layer.
        out.append(
            (QWEN_FOLDER_PREFIX, loaded, random_bundle(loaded, [max(1, n_layers // 6)], 2048, 32))
        )
    elif args.qwen:
        print(f"{QWEN_FOLDER_PREFIX} is not converted under {cache_dir()}; skipped", flush=True)
    return out


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tokens", type=int, default=8192, help="tokens of text per pass")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--batch-sizes",
        default="",
        type=lambda s: [int(x) for x in s.split(",") if x],
        help="extra scan batch sizes to compare, e.g. 1,8",
    )
    parser.add_argument("--dtype", default="auto")
    parser.add_argument(
        "--sae",
        type=Path,
        default=None,
        help="SAE bundle for the default model (default: the shipped one)",
    )
    parser.add_argument(
        "--no-qwen",
        dest="qwen",
        action="store_false",
        help="skip Qwen2.5-Coder-0.5B even if it is installed",
    )
    parser.add_argument("--name", default="scan_throughput")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    rows: list[dict[str, Any]] = []
    for name, loaded, bundle in models(args):
        rows += bench_model(name, loaded, bundle, args)
    table = markdown_table(
        [
            "model",
            "setting",
            "SAE k, coding",
            "tokens",
            "S3 index tok/s",
            "full forward tok/s",
            "S3 / forward",
        ],
        [
            [
                r["model"],
                r["variant"],
                f"{r['sae_k']}, {r['key_coding']}",
                r["tokens"],
                f"{r['s3_tok_s']:,.0f}",
                f"{r['forward_tok_s']:,.0f}",
                r["ratio"],
            ]
            for r in rows
        ],
    )
    settings = {
        k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items() if k != "out"
    }
    write_result(
        args.name,
        {
            "settings": settings,
            "torch_threads": torch.get_num_threads(),
            "rows": rows,
            "numpy": np.__version__,
        },
        table,
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
