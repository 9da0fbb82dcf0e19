"""GPU scan throughput and peak memory against full-KV prefill and the bare chunked pass.

For each architecture (random weights, bf16, SDPA) and context length, three things read the same
random token ids:

- ``prefill``: one forward pass over the whole context with a KV cache (``use_cache=True``,
  one logit kept), what a long-context model does before it can answer;
- ``bare``: the scan's chunks through the scan's layers, no cache, no SAE work: the floor;
- ``s3``: the indexing scan (chunks, SAE encoding of every indexed KV head, top-k, ids and
  activations copied to the CPU, postings appended there), with and without the raw keys that the
  exact scorer stores, and once more without the one-batch overlap (``s3_serial``).

Peak memory is reported above the weights. Model FLOPs utilisation is the forward pass's matmul
FLOPs over the time, against a bf16 matmul rate measured in the same run.

    python -m benchmarks.gpu_scan --models llama-3.1-8b,qwen2.5-7b --contexts 32768,131072,524288
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, markdown_table, write_result
from benchmarks.gpu_models import (
    build_model,
    forward_flops,
    gib,
    matmul_ceiling,
    random_bundle,
    retrieval_heads,
    scan_layers,
    sync,
)
from s3_retriever.index.key_encoding import KeyEncoder, NewCodes, NewKeys
from s3_retriever.index.postings import Field
from s3_retriever.model.loading import attention_shape
from s3_retriever.model.scan import ScanConfig, Scanner, TokenizedText
from s3_retriever.sae.pursuit import pursuit_encode


def random_document(n_tokens: int, vocab: int, seed: int) -> TokenizedText:
    """Random token ids (offsets are unused by the scan)."""
    ids = np.random.default_rng(seed).integers(1000, vocab, size=n_tokens, dtype=np.int64)
    return TokenizedText(ids, np.arange(n_tokens), np.arange(1, n_tokens + 1))


def measure(fn: Callable[[], Any], device: torch.device, weights: int, repeats: int) -> dict:
    """Median seconds over ``repeats`` runs and the peak memory above the weights (GiB)."""
    times = []
    peak = 0
    for _ in range(repeats):
        sync(device)
        if device.type == "cuda":
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(device)
        start = time.perf_counter()
        result = fn()
        sync(device)
        times.append(time.perf_counter() - start)
        del result
        if device.type == "cuda":
            peak = max(peak, torch.cuda.max_memory_allocated(device) - weights)
    return {"seconds": statistics.median(times), "all_seconds": times, "peak_gib": gib(peak)}


class ScanRunner:
    """The three scan variants over one model, sharing its scanner."""

    def __init__(
        self,
        model: Any,
        depth: int,
        chunk: int,
        batch: int,
        n_latents: int,
        k: int,
        key_coding: str = "encoder",
    ):
        self.model = model
        self.layers = scan_layers(model, depth)
        self.heads = retrieval_heads(model, self.layers)
        _, n_heads, n_kv, self.head_dim = attention_shape(model)
        group = n_heads // n_kv
        self.fields: list[Field] = sorted({(layer, head // group) for layer, head in self.heads})
        self.bundle = dataclasses.replace(
            random_bundle(model, self.layers, self.heads, n_latents, k), key_coding=key_coding
        )
        self.scanner = Scanner(
            model,
            self.layers,
            (),
            ScanConfig(chunk_size=chunk, batch_size=batch, show_progress=False),
            bos_token_id=model.config.bos_token_id,
        )
        device = self.scanner.device
        self.encoders = {
            store_keys: KeyEncoder(
                self.bundle, self.fields, self.head_dim, device, store_keys, True
            )
            for store_keys in (False, True)
        }

    def bare(self, doc: TokenizedText) -> int:
        n = 0
        for captured in self.scanner.scan_batches([doc]):
            n += len(captured.items)
        return n

    def s3(self, doc: TokenizedText, store_keys: bool, overlap: bool = True) -> NewCodes:
        encoder = self.encoders[store_keys]
        new_keys: NewKeys = {f: [] for f in self.fields}
        new_codes: NewCodes = {f: [] for f in self.fields}
        base = np.zeros(1, np.int64)
        batches = self.scanner.scan_batches([doc])
        if overlap:
            encoder.run(batches, base, new_keys, new_codes)
        else:
            for captured in batches:
                encoder.store(encoder.encode(captured), base, new_keys, new_codes)
        return new_codes

    def agreement(self, doc: TokenizedText) -> dict[str, float]:
        """Fast path (batched device encoding) against a per-chunk float64 CPU reference."""
        fast = self.s3(doc, store_keys=False)
        same = total = 0
        max_act_error = 0.0
        first = 0
        for capture in self.scanner.scan([doc]):
            n = next(iter(capture.keys.values())).shape[0]
            for layer, kv in self.fields:
                sae = self.bundle.saes[layer]
                keys = capture.keys[layer][:, kv, :].double().cpu()
                if self.bundle.key_coding == "pursuit":
                    ids, acts = pursuit_encode(sae, keys.float())
                    acts = acts.double()
                else:
                    pre = torch.relu((keys - sae.b_dec.double()) @ sae.W_enc.double().T + sae.b_enc)
                    acts, ids = pre.topk(sae.config.k, dim=-1)
                chunk = [p for p in fast[(layer, kv)] if int(p[0][0]) == first][0]
                fast_ids = np.sort(chunk[1].astype(np.int64), axis=1)
                ref_ids = np.sort(ids.numpy(), axis=1)
                same += int((fast_ids == ref_ids).all(axis=1).sum())
                total += n
                fast_top = np.sort(chunk[2].astype(np.float64), axis=1)
                ref_top = np.sort(acts.numpy(), axis=1)
                scale = np.abs(ref_top).max() or 1.0
                max_act_error = max(max_act_error, float(np.abs(fast_top - ref_top).max() / scale))
            first += n
        return {"identical_id_sets": same / max(total, 1), "max_activation_error": max_act_error}


def rates(label: str, got: dict, context: int, flops: float, ceiling: float) -> dict:
    """Add tokens per second and model FLOPs utilisation to a measurement, and print it."""
    rate = context / got["seconds"]
    print(
        f"  {context:>7} {label:<9} {rate:>10,.0f} tok/s peak +{got['peak_gib']:.2f} GiB",
        flush=True,
    )
    return {**got, "tokens_per_s": rate, "mfu": flops / got["seconds"] / ceiling}


def prefill(model: Any, ids: torch.Tensor) -> Any:
    """Full-KV prefill: the whole context in one pass, cache kept, one logit computed."""
    with torch.inference_mode():
        return model(input_ids=ids, use_cache=True, logits_to_keep=1)


def bench_model(name: str, args: argparse.Namespace, device: torch.device, ceiling: float) -> dict:
    started = time.perf_counter()
    model = build_model(name, device)
    sync(device)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    n_layers = model.config.num_hidden_layers
    depth = args.depth or n_layers // 2
    runner = ScanRunner(model, depth, args.chunk, args.batch, args.latents, args.k, args.key_coding)
    vocab = model.config.vocab_size
    print(
        f"{name}: built in {time.perf_counter() - started:.1f}s, weights {gib(weights):.2f} GiB, "
        f"layers {runner.layers}, {len(runner.fields)} fields",
        flush=True,
    )
    warm = random_document(2 * args.chunk, vocab, seed=1)
    runner.bare(warm)
    runner.s3(warm, store_keys=True)
    runner.s3(warm, store_keys=False, overlap=False)
    agreement = runner.agreement(warm)
    print(f"  fast path vs reference: {agreement}", flush=True)
    rows: list[dict] = []
    for context in args.contexts:
        doc = random_document(context, vocab, seed=context)
        row: dict[str, Any] = {"model": name, "context": context}
        runs: dict[str, Callable[[], Any]] = {
            "bare": partial(runner.bare, doc),
            "s3": partial(runner.s3, doc, False),
            "s3_keys": partial(runner.s3, doc, True),
            "s3_serial": partial(runner.s3, doc, False, False),
        }
        for label, fn in runs.items():
            got = measure(fn, device, weights, args.repeats)
            flops = forward_flops(model, context, args.chunk / 2, depth)
            row[label] = rates(label, got, context, flops, ceiling)
        elapsed = time.perf_counter() - started
        if context <= args.prefill_max and elapsed < args.prefill_budget_s:
            ids = torch.from_numpy(doc.input_ids).to(device)[None]
            try:
                got = measure(partial(prefill, model, ids), device, weights, 1)
                flops = forward_flops(model, context, context / 2)
                row["prefill"] = rates("prefill", got, context, flops, ceiling)
            except torch.OutOfMemoryError as exc:
                row["prefill"] = {"skipped": f"out of memory: {str(exc)[:160]}"}
                print(f"  {context:>7} prefill   out of memory", flush=True)
            del ids
        else:
            why = "longer than --prefill-max" if context > args.prefill_max else "time budget"
            row["prefill"] = {"skipped": why}
        rows.append(row)
    summary = {
        "model": name,
        "weights_gib": gib(weights),
        "depth": depth,
        "layers": list(runner.layers),
        "fields": len(runner.fields),
        "agreement": agreement,
        "rows": rows,
    }
    return summary


def table(results: Sequence[dict]) -> str:
    header = [
        "model",
        "context",
        "S3 tok/s",
        "bare tok/s",
        "S3 / bare",
        "prefill tok/s",
        "S3 / prefill",
        "S3 peak GiB",
        "bare peak GiB",
        "prefill peak GiB",
        "S3 MFU",
        "S3+keys / bare",
        "serial / bare",
    ]
    out = []
    for result in results:
        for row in result["rows"]:
            s3, bare, pre = row["s3"], row["bare"], row["prefill"]
            pre_rate = pre.get("tokens_per_s")
            out.append(
                [
                    result["model"],
                    f"{row['context'] // 1024}k",
                    f"{s3['tokens_per_s']:,.0f}",
                    f"{bare['tokens_per_s']:,.0f}",
                    s3["tokens_per_s"] / bare["tokens_per_s"],
                    f"{pre_rate:,.0f}" if pre_rate else pre["skipped"],
                    s3["tokens_per_s"] / pre_rate if pre_rate else "-",
                    s3["peak_gib"],
                    bare["peak_gib"],
                    pre["peak_gib"] if pre_rate else "-",
                    s3["mfu"],
                    row["s3_keys"]["tokens_per_s"] / bare["tokens_per_s"],
                    row["s3_serial"]["tokens_per_s"] / bare["tokens_per_s"],
                ]
            )
    return markdown_table(header, out)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="llama-3.1-8b,qwen2.5-7b")
    parser.add_argument(
        "--contexts", default="32768,131072,524288", type=lambda s: [int(x) for x in s.split(",")]
    )
    parser.add_argument("--chunk", type=int, default=4096, help="tokens per scan chunk")
    parser.add_argument("--batch", type=int, default=1, help="chunks per scan batch")
    parser.add_argument("--depth", type=int, default=0, help="layers run (0: half the model)")
    parser.add_argument("--latents", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument(
        "--key-coding",
        choices=("encoder", "pursuit"),
        default="encoder",
        help="how keys become postings: the SAE's encoder or matching pursuit",
    )
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--prefill-max",
        type=int,
        default=131072,
        help="longest context that gets a full-KV prefill",
    )
    parser.add_argument(
        "--prefill-budget-s",
        type=float,
        default=1e9,
        help="skip prefills once a model's benchmark has run this long",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--name", default="gpu_scan", help="result file: bench_<name>.json")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    ceiling = matmul_ceiling(device)
    print(f"bf16 matmul ceiling: {ceiling / 1e12:.0f} TFLOP/s", flush=True)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    results: list[dict] = []
    for name in args.models.split(","):
        results.append(bench_model(name, args, device, ceiling))
        if device.type == "cuda":
            torch.cuda.empty_cache()  # the last model's weights are gone; free them for the next
        # Written after every model, so a run stopped part-way still leaves what it measured.
        write_result(
            args.name,
            {"settings": settings, "matmul_ceiling_tflops": ceiling / 1e12, "results": results},
            table(results),
            out_dir=args.out,
        )


if __name__ == "__main__":
    main()
