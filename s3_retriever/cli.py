"""The ``s3-retriever`` command line.

s3-retriever index FILE... --out DIR      scan files into an index directory
s3-retriever query DIR "question"         print evidence spans with sources and scores
s3-retriever train-sae --data PATH --out DIR   train an SAE bundle for a model
s3-retriever sae-report --data PATH --out STEM  fidelity report of an SAE bundle
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from pathlib import Path

from s3_retriever.errors import S3RetrieverError


class CLIError(Exception):
    """A user-facing problem: printed as one line on stderr, exit status 2."""


def _read_text(path: Path) -> str:
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CLIError(f"cannot read {path}: {exc.strerror or exc}") from exc
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise CLIError(
            f"{path} is not valid UTF-8 (byte {exc.start}); convert it first, e.g. "
            f"`iconv -f latin1 -t utf-8 {path} > {path}.utf8`"
        ) from exc


def _cmd_index(args: argparse.Namespace) -> int:
    from s3_retriever.retriever import S3Retriever

    paths = [Path(p) for p in args.files]
    texts = [_read_text(p) for p in paths]
    out = Path(args.out)
    if out.exists() and not args.append and (out / "manifest.json").exists():
        raise CLIError(f"{out} already holds an index; pass --append to add to it")
    if args.append and (out / "manifest.json").exists():
        retriever = S3Retriever.load(out, model_path=args.model)
    else:
        retriever = S3Retriever.from_pretrained(args.model, sae_path=args.sae)
    ids = [str(p) for p in paths]
    metadatas = [{"source": str(p)} for p in paths]
    retriever.add_documents(texts, ids=ids, metadatas=metadatas)
    retriever.save(out)
    n_tokens = retriever.corpus.n_positions
    print(f"indexed {len(paths)} file(s), {n_tokens} tokens -> {out}")
    return 0


def _cmd_query(args: argparse.Namespace) -> int:
    from s3_retriever.retriever import S3Retriever

    retriever = S3Retriever.load(Path(args.index), model_path=args.model)
    hits = retriever.retrieve(
        args.question, token_budget=args.budget, mode=args.mode, top_k=args.top_k
    )
    if args.json:
        rows = [
            {
                "id": h.id,
                "doc_id": h.doc_id,
                "start_char": h.start_char,
                "end_char": h.end_char,
                "score": h.score,
                "scores": h.scores,
                "text": h.text,
            }
            for h in hits
        ]
        print(json.dumps(rows, ensure_ascii=False, indent=1))
        return 0
    if not hits:
        print("no evidence found")
    for hit in hits:
        parts = " ".join(f"{k}={v:.4g}" for k, v in hit.scores.items())
        print(f"[{hit.doc_id} {hit.start_char}:{hit.end_char}] score={hit.score:.4g} {parts}")
        print("    " + hit.text.replace("\n", "\n    "))
    return 0


def _cmd_train_sae(args: argparse.Namespace) -> int:
    from s3_retriever.models import attention_shape, load_model
    from s3_retriever.sae import SAEConfig
    from s3_retriever.sae_training import TrainConfig, train_bundles

    if args.resume and not args.checkpoint:
        raise CLIError("--resume continues from --checkpoint DIR; pass the folder to resume from")
    texts = [_read_text(Path(p)) for p in args.data]
    loaded = load_model(args.model)
    layers = [int(x) for x in args.layers.split(",")]
    heads = (
        [tuple(int(v) for v in h.split(":")) for h in args.heads.split(",")] if args.heads else []
    )
    _, _, _, head_dim = attention_shape(loaded.model)
    value_config = None
    if args.values:
        value_config = SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.k_values)
    trained = train_bundles(
        loaded.model,
        loaded.tokenizer,
        loaded.model_id,
        texts,
        layers,
        SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.k_keys),
        TrainConfig(steps=args.steps),
        max_tokens=args.max_tokens,
        retrieval_heads=[(a, b) for a, b in heads],
        question_texts=_read_lines(args.questions),
        metric=args.metric,
        value_sae_config=value_config,
        checkpoint_dir=args.checkpoint,
        resume=args.resume,
    )
    command = " ".join(sys.argv)
    trained.keys.info = {
        "reports": [r.__dict__ for r in trained.reports if r.vectors == "keys"],
        "command": command,
    }
    trained.keys.save(args.out)
    if trained.values is not None:
        trained.values.info.update(
            reports=[r.__dict__ for r in trained.reports if r.vectors == "values"],
            command=command,
        )
        trained.values.save(Path(args.out) / VALUES_SUBFOLDER)
    for r in trained.reports:
        print(
            f"layer {r.layer} {r.vectors}: held-out FVU {r.held_out_fvu:.4f}, "
            f"dead {r.dead_fraction:.1%}"
        )
    return 0


VALUES_SUBFOLDER = "values"
"""Where ``train-sae --values`` puts the value bundle, inside the key bundle's folder (the key
bundle's checksum covers only its own files, so retrieval sees the same bundle either way)."""


def _read_lines(path: str | None) -> list[str]:
    if not path:
        return []
    return [line.strip() for line in _read_text(Path(path)).splitlines() if line.strip()]


def _cmd_sae_report(args: argparse.Namespace) -> int:
    from s3_retriever.fidelity import build_report, write_report
    from s3_retriever.models import load_model
    from s3_retriever.sae import SAEBundle, shipped_bundle_dir

    texts = [_read_text(Path(p)) for p in args.data]
    questions = _read_lines(args.questions)
    loaded = load_model(args.model)
    folder = Path(args.sae) if args.sae else shipped_bundle_dir(loaded.model_id)
    bundle = SAEBundle.load(folder)
    values_folder = Path(args.values) if args.values else folder / VALUES_SUBFOLDER
    values = None
    if args.values or (values_folder / "config.json").is_file():
        values = SAEBundle.load(values_folder)
    report = build_report(loaded, bundle, texts, questions, args.max_tokens, values=values)
    markdown, plotted = write_report(report, args.out)
    print(markdown)
    if not plotted:
        print("(install matplotlib for the elbow plot: pip install 's3-retriever[plots]')")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="s3-retriever",
        description="Evidence retrieval from long documents with a language model's attention.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser("index", help="index UTF-8 text files into a directory")
    index.add_argument("files", nargs="+", help="text files to index")
    index.add_argument("--out", required=True, help="index directory to write")
    index.add_argument("--model", default=None, help="model folder (default: bundled SmolLM2)")
    index.add_argument("--sae", default=None, help="SAE bundle folder (default: shipped one)")
    index.add_argument("--append", action="store_true", help="add to an existing index")
    index.set_defaults(run=_cmd_index)

    query = sub.add_parser("query", help="retrieve evidence spans for a question")
    query.add_argument("index", help="index directory")
    query.add_argument("question", help="the question")
    query.add_argument("--budget", type=int, default=512, help="token budget (default 512)")
    query.add_argument("--mode", choices=("hybrid", "s3", "bm25"), default="hybrid")
    query.add_argument("--top-k", type=int, default=None, help="keep at most this many spans")
    query.add_argument("--model", default=None, help="model folder the index was built with")
    query.add_argument("--json", action="store_true", help="print JSON instead of text")
    query.set_defaults(run=_cmd_query)

    train = sub.add_parser("train-sae", help="train Top-K SAEs on a model's keys (and values)")
    train.add_argument("--data", nargs="+", required=True, help="UTF-8 text files to train on")
    train.add_argument("--out", required=True, help="bundle folder to write")
    train.add_argument("--model", default=None, help="model folder (default: bundled SmolLM2)")
    train.add_argument("--layers", required=True, help="comma-separated layers, e.g. 5,8")
    train.add_argument("--heads", default="", help="retrieval heads layer:head, e.g. 5:6,8:1")
    train.add_argument("--latents", type=int, default=2048, help="dictionary size")
    train.add_argument(
        "--k-keys", "--k", dest="k_keys", type=int, default=32, help="active latents per key"
    )
    train.add_argument(
        "--values",
        action="store_true",
        help="also train value SAEs, written to OUT/values (STA's dual budget)",
    )
    train.add_argument(
        "--k-values", type=int, default=32, help="active latents per value (with --values)"
    )
    train.add_argument(
        "--checkpoint", default=None, help="folder for training checkpoints (one per SAE)"
    )
    train.add_argument(
        "--resume", action="store_true", help="continue the checkpoints in --checkpoint"
    )
    train.add_argument("--steps", type=int, default=3000, help="optimiser steps per layer")
    train.add_argument("--max-tokens", type=int, default=200_000, help="tokens of text to scan")
    train.add_argument(
        "--questions", default=None, help="file of questions, one per line: query centres"
    )
    train.add_argument(
        "--metric",
        choices=("reconstruction", "attention"),
        default="reconstruction",
        help="SAE loss: plain key reconstruction, or error of q.k for the questions' queries",
    )
    train.set_defaults(run=_cmd_train_sae)

    report = sub.add_parser("sae-report", help="fidelity of an SAE bundle on held-out text")
    report.add_argument("--data", nargs="+", required=True, help="held-out UTF-8 text files")
    report.add_argument("--questions", default=None, help="file of questions, one per line")
    report.add_argument("--sae", default=None, help="SAE bundle folder (default: shipped one)")
    report.add_argument(
        "--values", default=None, help="value SAE bundle folder (default: SAE/values if present)"
    )
    report.add_argument("--model", default=None, help="model folder (default: bundled SmolLM2)")
    report.add_argument("--max-tokens", type=int, default=30_000, help="held-out tokens to use")
    report.add_argument("--out", required=True, help="output path stem (.json, .md, .png)")
    report.set_defaults(run=_cmd_sae_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.run(args)
        return status
    except (CLIError, S3RetrieverError, ValueError, TypeError) as exc:
        print(f"s3-retriever: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("s3-retriever: interrupted; nothing was written", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
