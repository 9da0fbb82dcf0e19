"""The Ray Data scan of ``build_index`` against the direct scan of ``benchmarks.gpu_scan``.

One process, one GPU, one model folder (a random-weight real architecture, saved as in
``benchmarks.gpu_user_path``), the same documents on both sides:

- ``direct``: ``ScanRunner.s3`` of ``benchmarks.gpu_scan`` (scan, SAE encoding, int8 keys and
  codes copied to the CPU) over every document, on the model loaded in this process; and the
  public ``S3Retriever.scan_texts`` (which adds tokenising) over the same texts;
- ``ray``: :func:`s3_retriever.distributed.build_index` with one scan actor holding the GPU
  (``num_gpus=1``, Ray Data ``map_batches`` over an actor pool) into one shard. Reported twice:
  the whole call (the driver's CPU copy of the model, the actor's start and model load, the scan,
  the shard's commit and save), and the steady state: the documents after the first quarter over
  the time between the first quarter's last and the last scanned document reaching the driver,
  which is what a long build runs at.

    python -m benchmarks.gpu_ray_scan --model llama-3.1-8b --docs 16 --doc-tokens 32768
    python -m benchmarks.gpu_ray_scan --model llama-3.1-8b --docs 32 --docs-per-call 4
"""

from __future__ import annotations

import argparse
import gc
import statistics
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

import s3_retriever.distributed.build as build_module
from benchmarks.common import RESULTS_DIR, markdown_table, write_result
from benchmarks.gpu_models import sync
from benchmarks.gpu_scan import ScanRunner
from benchmarks.gpu_user_path import _TEXT, prepare_folders, synthetic_document
from s3_retriever import RetrieverConfig, S3Retriever, ScanConfig
from s3_retriever.model.scan import tokenize, tokenize_many


def _timed_scan(arrivals: list[float]) -> Any:
    """``build_index``'s own Ray Data scan, noting when each scanned document reaches the
    driver (instrumentation only: the documents and their order pass through unchanged)."""
    real_scan = build_module._scan

    def scan(*args: Any, **kwargs: Any) -> Iterator[Any]:
        for item in real_scan(*args, **kwargs):
            arrivals.append(time.perf_counter())
            yield item

    return scan


def direct_seconds(fn: Any, device: torch.device, repeats: int) -> list[float]:
    times = []
    for _ in range(repeats):
        sync(device)
        started = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - started)
    return times


def measure_direct(
    texts: list[str],
    model_dir: Path,
    sae_dir: Path,
    config: RetrieverConfig,
    device: torch.device,
    depth: int,
    repeats: int,
) -> tuple[list[float], list[float], dict[str, list[float]], int]:
    """Seconds of the direct scan, of ``scan_texts`` and of tokenising alone over ``texts``, and
    their tokens, on a model loaded in this process (dropped on return)."""
    retriever = S3Retriever.from_pretrained(model_dir, sae_dir, config, device=device.type)
    docs = [tokenize(retriever.model.tokenizer, t) for t in texts]
    print(f"{len(docs)} documents, {sum(len(d) for d in docs):,} tokens", flush=True)
    scan = config.scan
    runner = ScanRunner(retriever.model.model, depth, scan.chunk_size, scan.batch_size, 2048, 32)

    def direct_all() -> None:
        for doc in docs:
            runner.s3(doc, store_keys=True)

    direct_all()  # warm-up
    direct = direct_seconds(direct_all, device, repeats)
    retriever.scan_texts(texts[:1])
    public = direct_seconds(lambda: retriever.scan_texts(texts), device, repeats)
    tokenizer = retriever.model.tokenizer
    tokenising = {
        "one text per call": direct_seconds(
            lambda: [tokenize(tokenizer, t) for t in texts], device, repeats
        ),
        "shared calls (tokenize_many)": direct_seconds(
            lambda: tokenize_many(tokenizer, texts), device, repeats
        ),
    }
    return direct, public, tokenising, sum(len(d) for d in docs)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--docs", type=int, default=16)
    parser.add_argument("--doc-tokens", type=int, default=32768)
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1, help="chunks per forward pass")
    parser.add_argument(
        "--docs-per-call",
        type=int,
        default=1,
        help="documents per scan call (build_index batch_size)",
    )
    parser.add_argument("--repeats", type=int, default=3, help="direct scan repeats")
    parser.add_argument("--cpus", type=int, default=8, help="CPUs of the local Ray cluster")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--folder", type=Path, default=None, help="model folder (reused if there)")
    parser.add_argument("--name", default="gpu_ray_scan")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    text = _TEXT.read_text(encoding="utf-8")
    work = Path(args.folder or tempfile.mkdtemp(prefix="s3_ray_scan_"))
    tokenizer, depth = prepare_folders(args.model, work, device, text)
    model_dir, sae_dir = work / "model", work / "saes"
    texts = [
        synthetic_document(tokenizer, text.split(), args.doc_tokens, seed=seed)
        for seed in range(args.docs)
    ]
    scan = ScanConfig(chunk_size=args.chunk, batch_size=args.batch, show_progress=False)
    config = RetrieverConfig(scan=scan)

    direct, public, tokenising, n_tokens = measure_direct(
        texts, model_dir, sae_dir, config, device, depth, args.repeats
    )
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()

    import ray

    # A CPU run (checking the script) gives the cluster no GPU, so build_index scans on CPU.
    ray.init(num_cpus=args.cpus, num_gpus=int(device.type == "cuda"), log_to_driver=False)
    arrivals: list[float] = []
    build_module._scan = _timed_scan(arrivals)
    out = Path(tempfile.mkdtemp(prefix="sharded_", dir=work))  # a new build, never a resume
    started = time.perf_counter()
    report = build_module.build_index(
        [{"id": f"doc-{i}", "text": t} for i, t in enumerate(texts)],
        out,
        1,
        model_path=model_dir,
        sae_path=sae_dir,
        config=config,
        num_actors=1,
        batch_size=args.docs_per_call,
        commit_every=len(texts) + 1,
        progress=False,
    )
    ray_total = time.perf_counter() - started
    ray.shutdown()
    assert report.tokens == n_tokens, (report.tokens, n_tokens)
    # From the first quarter's last document on: the actor has long been loaded and busy, and
    # Ray Data's first outputs, which can reach the driver together, are left out.
    first = max(0, len(texts) // 4 - 1)
    lengths = [len(tokenize(tokenizer, t)) for t in texts]
    steady_tokens = sum(lengths[first + 1 :])
    steady_s = arrivals[-1] - arrivals[first]
    direct_s = statistics.median(direct)
    public_s = statistics.median(public)
    rows = [
        ["direct scan (ScanRunner.s3)", f"{n_tokens / direct_s:,.0f}", 1.0, "-"],
        ["S3Retriever.scan_texts", f"{n_tokens / public_s:,.0f}", direct_s / public_s, "-"],
        [
            "Ray Data scan, steady state (last 3/4 of docs)",
            f"{steady_tokens / steady_s:,.0f}",
            (steady_tokens / steady_s) / (n_tokens / direct_s),
            f"{1 - (steady_tokens / steady_s) / (n_tokens / direct_s):.1%}",
        ],
        [
            "build_index, whole call",
            f"{n_tokens / ray_total:,.0f}",
            direct_s / ray_total,
            f"{1 - direct_s / ray_total:.1%}",
        ],
    ]
    rows += [
        [f"tokenising alone, {how}", f"{n_tokens / statistics.median(t):,.0f}", "-", "-"]
        for how, t in tokenising.items()
    ]
    table = markdown_table(["path", "tok/s", "of direct", "overhead"], rows)
    print(table, flush=True)
    write_result(
        args.name,
        {
            "settings": {k: str(v) for k, v in vars(args).items() if k != "out"},
            "tokens": n_tokens,
            "direct_seconds": direct,
            "scan_texts_seconds": public,
            "tokenising_seconds": tokenising,
            "ray_total_seconds": ray_total,
            "ray_first_document_seconds": arrivals[0] - started,
            "ray_arrival_seconds": [t - started for t in arrivals],
            "ray_steady_seconds": steady_s,
            "ray_steady_tokens": steady_tokens,
            "build_report": {"added": report.added, "tokens": report.tokens},
        },
        table,
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
