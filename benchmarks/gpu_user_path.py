"""The user's GPU path: ``S3Retriever.from_pretrained(folder, device="cuda")`` on a 7-8B model.

``benchmarks.gpu_scan`` times the scan's parts on a model built in memory. A user instead saves a
model folder, loads it through the public API and calls ``add_documents``; that path adds the
load, tokenisation, the commit into the CPU stores and everything else ``add_documents`` does.
This script builds the real architecture with random weights, saves it as a model folder (with a
small BPE tokenizer trained here, since no tokenizer can be downloaded), saves a random SAE
bundle of the shipped shape, then in one process:

- ``direct``: the scan of ``benchmarks.gpu_scan`` (``ScanRunner.s3``) over the same layers, heads
  and chunking, on the model the retriever loaded: the anchor;
- ``add_documents``: one call indexing a ~``--tokens``-token document through the public API,
  with the default settings (int8 keys and postings) and with postings only;
- ``retrieve``: end-to-end query latency (question pass, search, spans, fusion) in each mode.

    python -m benchmarks.gpu_user_path --model llama-3.1-8b --tokens 131072
"""

from __future__ import annotations

import argparse
import dataclasses
import gc
import random
import statistics
import tempfile
import time
from collections.abc import Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import RESULTS_DIR, markdown_table, write_result
from benchmarks.gpu_models import build_model, random_bundle, retrieval_heads, scan_layers, sync
from benchmarks.gpu_scan import ScanRunner, measure
from s3_retriever import RetrieverConfig, S3Retriever, ScanConfig
from s3_retriever.model.scan import tokenize

_TEXT = Path(__file__).resolve().parent.parent / "examples" / "data" / "gpl-3.0.txt"
_QUESTIONS = (
    "Can I charge a fee for copies of the program?",
    "What happens to my licence if I break the terms?",
    "Must I give recipients the source code?",
    "Is there any warranty for the program?",
    "What counts as the corresponding source?",
)


def train_tokenizer(folder: Path, text: str, vocab: int) -> Any:
    """A byte-level BPE tokenizer fitted on ``text``, saved as a Hugging Face fast tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<s>", "</s>"])
    bpe.train_from_iterator(text.splitlines(), trainer)
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=bpe, bos_token="<s>", eos_token="</s>")
    tokenizer.save_pretrained(folder)
    return tokenizer


def synthetic_document(tokenizer: Any, words: Sequence[str], n_tokens: int, seed: int) -> str:
    """Words of the licence in a random order, grown until it holds ``n_tokens`` tokens."""
    rng = random.Random(seed)
    pieces: list[str] = []
    count = 0
    while count < n_tokens:
        block = " ".join(rng.choice(words) for _ in range(2000))
        pieces.append(block)
        count += len(tokenizer(block, add_special_tokens=False)["input_ids"])
    return "\n".join(pieces)


def save_model_folder(name: str, folder: Path, device: torch.device, text: str) -> tuple[Any, Any]:
    """Save a random-weight model of architecture ``name`` and a fitted tokenizer in ``folder``."""
    model = build_model(name, device)
    model.config.bos_token_id = 0
    started = time.perf_counter()
    model.save_pretrained(folder, safe_serialization=True)
    tokenizer = train_tokenizer(folder, text, vocab=min(8192, model.config.vocab_size))
    print(f"saved {name} to {folder} in {time.perf_counter() - started:.1f}s", flush=True)
    return model, tokenizer


def prepare_folders(name: str, work: Path, device: torch.device, text: str) -> tuple[Any, int]:
    """The model folder ``work/model`` and SAE bundle ``work/saes`` of architecture ``name``:
    saved by an earlier run (``--folder``) or saved now. Returns the tokenizer and scan depth."""
    from transformers import AutoConfig, AutoTokenizer

    model_dir, sae_dir = work / "model", work / "saes"
    if (model_dir / "config.json").is_file() and sae_dir.is_dir():
        print(f"reusing the model folder {model_dir}", flush=True)
        layers = AutoConfig.from_pretrained(model_dir).num_hidden_layers
        return AutoTokenizer.from_pretrained(model_dir), layers // 2
    model, tokenizer = save_model_folder(name, model_dir, device, text)
    depth = model.config.num_hidden_layers // 2
    layers = scan_layers(model, depth)
    heads = retrieval_heads(model, layers)
    random_bundle(model, layers, heads, 2048, 32).save(sae_dir)
    del model
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return tokenizer, depth


def query_latency(retriever: S3Retriever, mode: str, repeats: int) -> dict[str, float]:
    """p50 / p99 seconds of ``retrieve`` over the questions, after one warm-up call each."""
    for question in _QUESTIONS:
        retriever.retrieve(question, token_budget=1024, mode=mode)
    times = []
    for _ in range(repeats):
        for question in _QUESTIONS:
            started = time.perf_counter()
            retriever.retrieve(question, token_budget=1024, mode=mode)
            times.append(time.perf_counter() - started)
    times.sort()
    return {
        "p50_ms": 1000 * statistics.median(times),
        "p99_ms": 1000 * times[min(len(times) - 1, round(0.99 * (len(times) - 1)))],
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--tokens", type=int, default=131072, help="tokens in the indexed document")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="add_documents and scan repeats")
    parser.add_argument("--query-repeats", type=int, default=4)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--folder", type=Path, default=None, help="where the model folder goes")
    parser.add_argument("--name", default="gpu_user_path")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    text = _TEXT.read_text(encoding="utf-8")
    work = Path(args.folder or tempfile.mkdtemp(prefix="s3_user_path_"))
    model_dir, sae_dir = work / "model", work / "saes"
    tokenizer, depth = prepare_folders(args.model, work, device, text)
    document = synthetic_document(tokenizer, text.split(), args.tokens, seed=0)
    scan = ScanConfig(chunk_size=args.chunk, batch_size=args.batch, show_progress=False)

    started = time.perf_counter()
    retriever = S3Retriever.from_pretrained(
        model_dir, sae_dir, RetrieverConfig(scan=scan), device=args.device
    )
    load_s = time.perf_counter() - started
    n_tokens = len(tokenizer(document, add_special_tokens=False)["input_ids"])
    print(f"loaded in {load_s:.1f}s; document of {n_tokens:,} tokens", flush=True)

    runner = ScanRunner(retriever.model.model, depth, args.chunk, args.batch, 2048, 32)
    doc = tokenize(retriever.model.tokenizer, document)
    runner.s3(doc, store_keys=True)  # warm-up of both direct paths
    runner.s3(doc, store_keys=False)
    weights = torch.cuda.memory_allocated(device) if device.type == "cuda" else 0
    direct = {
        "s3_keys": measure(partial(runner.s3, doc, True), device, weights, args.repeats),
        "s3": measure(partial(runner.s3, doc, False), device, weights, args.repeats),
    }
    del runner
    gc.collect()
    # The public scan alone (tokenising, scan, encoding; no commit): where add_documents' time
    # goes between the direct scan and the commit.
    direct["scan_texts"] = measure(
        partial(retriever.scan_texts, [document]), device, weights, args.repeats
    )

    rows: list[dict[str, Any]] = []
    for label, config, anchor in (
        ("default (keys + postings)", RetrieverConfig(scan=scan), "s3_keys"),
        ("postings only", dataclasses.replace(RetrieverConfig.compact(), scan=scan), "s3"),
    ):
        times = []
        for repeat in range(args.repeats + 1):
            fresh = S3Retriever(retriever.model, retriever.bundle, config)
            sync(device)
            started = time.perf_counter()
            fresh.add_documents([document], ids=[f"doc-{repeat}"])
            sync(device)
            if repeat:  # the first call pays one-time CUDA set-up
                times.append(time.perf_counter() - started)
            last = fresh
        add_s = statistics.median(times)
        direct_s = direct[anchor]["seconds"]
        row = {
            "variant": label,
            "add_tok_s": n_tokens / add_s,
            "direct_tok_s": n_tokens / direct_s,
            "ratio": direct_s / add_s,
            "anchor": anchor,
            "add_all_seconds": times,
            "scan_texts_tok_s": n_tokens / direct["scan_texts"]["seconds"],
        }
        for mode in ("s3", "hybrid"):
            row[f"{mode}_query"] = query_latency(last, mode, args.query_repeats)
        print(row, flush=True)
        rows.append(row)
    table = markdown_table(
        [
            "variant",
            "add_documents tok/s",
            "direct scan tok/s",
            "add / direct",
            "scan_texts tok/s",
            "s3 p50 ms",
            "s3 p99 ms",
            "hybrid p50 ms",
            "hybrid p99 ms",
        ],
        [
            [
                r["variant"],
                f"{r['add_tok_s']:,.0f}",
                f"{r['direct_tok_s']:,.0f}",
                r["ratio"],
                f"{r['scan_texts_tok_s']:,.0f}",
                r["s3_query"]["p50_ms"],
                r["s3_query"]["p99_ms"],
                r["hybrid_query"]["p50_ms"],
                r["hybrid_query"]["p99_ms"],
            ]
            for r in rows
        ],
    )
    write_result(
        args.name,
        {
            "settings": {k: str(v) for k, v in vars(args).items() if k != "out"},
            "model_load_seconds": load_s,
            "document_tokens": n_tokens,
            "direct": direct,
            "rows": rows,
        },
        table,
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
