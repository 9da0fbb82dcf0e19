"""The ``s3-retriever`` command line.

s3-retriever index PATH... --out DIR      scan files, folders or JSONL into an index directory
                                          (saved every --commit-every docs; --resume continues)
                          --shards N [--ray ADDR] a sharded index built on Ray (rerun resumes)
s3-retriever query DIR "question"...      evidence spans, best first (stdin: one question a
                                          line, JSON lines out; --filter key=value)
s3-retriever serve DIR                    answer queries over HTTP (JSON) from a loaded index
s3-retriever train-sae --data PATH --out DIR   train an SAE bundle for a model
s3-retriever sae-report --data PATH --out STEM  fidelity report of an SAE bundle
s3-retriever eval --data DIR --tasks T --out STEM  retrieval quality against baselines
"""

from __future__ import annotations

import argparse
import errno
import sys
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn, TextIO

from s3_retriever.cli_query import cmd_query
from s3_retriever.cli_research import cmd_eval, cmd_sae_report, cmd_train_sae
from s3_retriever.cli_scale import cmd_index_sharded, cmd_serve
from s3_retriever.errors import CLIError, S3RetrieverError

if TYPE_CHECKING:
    from s3_retriever.bulk import SourceDocument


def _read_text(path: Path) -> str:
    from s3_retriever.bulk import read_text

    return read_text(path)


def _cmd_index(args: argparse.Namespace) -> int:
    from s3_retriever.bulk import count_documents, empty_inputs, index_corpus, iter_documents
    from s3_retriever.index.folder import check_save_target
    from s3_retriever.index.storage import has_index
    from s3_retriever.retriever import S3Retriever

    out = Path(args.out)
    _refuse_out_among_inputs(out, [Path(p) for p in args.files])
    # Also checks that every input exists, before loading.
    total = count_documents(args.files, follow_links=args.follow_links)
    if total == 0:
        raise CLIError(
            f"nothing to index: {' '.join(args.files)} hold(s) no text; pass non-empty UTF-8 "
            f"text files, folders of them, or JSONL files"
        )
    empty = empty_inputs(args.files, follow_links=args.follow_links)
    if args.shards is not None:
        return cmd_index_sharded(args, total)
    if args.ray is not None:
        raise CLIError("--ray builds a sharded index; give --shards N too")
    # has_index also sees an index that a killed save left only in its backup, so --append
    # or --resume continues from it instead of starting an empty index that would hide it.
    exists = has_index(out)
    if exists and not (args.append or args.resume):
        raise CLIError(
            f"{out} already holds an index; pass --resume to continue an interrupted run "
            f"(documents already indexed are skipped) or --append to add new documents"
        )
    if exists:
        retriever = S3Retriever.load(out, model_path=args.model)
    else:
        check_save_target(out)  # a file or a folder of other files: refused before any scan
        retriever = S3Retriever.from_pretrained(args.model, sae_path=args.sae, compact=args.compact)
    documents = iter_documents(args.files, follow_links=args.follow_links)
    if args.append and not args.resume:
        documents = _refuse_indexed(documents, set(retriever.doc_ids))
    report = index_corpus(
        retriever,
        documents,
        out,
        commit_every=args.commit_every,
        total=total,
        progress=False if args.quiet else None,  # None: a bar only on a terminal
    )
    skipped = f", skipped {report.skipped} already indexed" if report.skipped else ""
    if empty:
        skipped += f", skipped {len(empty)} file(s) holding no text: {' '.join(map(str, empty))}"
    print(
        f"indexed {report.added} document(s), {report.tokens} tokens{skipped} -> {out} "
        f"({retriever.index.corpus.n_positions} tokens in all)"
    )
    return 0


def _refuse_out_among_inputs(out: Path, inputs: list[Path]) -> None:
    """``index notes --out notes`` would replace the documents it reads; an index inside an
    input folder would be read as documents by the next run."""
    target = out.resolve()
    for path in inputs:
        source = path.resolve()
        if target == source or source in target.parents or target in source.parents:
            raise CLIError(
                f"--out {out} overlaps the input {path}; write the index to a folder outside "
                f"the inputs (saving replaces the whole --out folder)"
            )


def _refuse_indexed(
    documents: Iterator[SourceDocument], indexed: set[str]
) -> Iterator[SourceDocument]:
    for doc in documents:
        if doc.doc_id in indexed:
            raise CLIError(
                f"{doc.doc_id} is already indexed; pass --resume to skip documents already "
                f"in the index"
            )
        yield doc


def _eval_task_names() -> list[str]:
    from s3_retriever.eval.harness import TASKS

    return list(TASKS)


class _Parser(argparse.ArgumentParser):
    """argparse's parser, whose usage errors survive arguments that are not valid UTF-8."""

    def error(self, message: str) -> NoReturn:
        # An unknown argument decoded with surrogateescape would make printing the error fail.
        safe = message.encode("utf-8", "backslashreplace").decode("utf-8")
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {safe}\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="s3-retriever",
        description="Evidence retrieval from long documents with a language model's attention.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    index = sub.add_parser(
        "index",
        help="index UTF-8 text files, folders of them, or JSONL files into a directory",
    )
    index.add_argument(
        "files",
        nargs="+",
        help='text files, folders (every file below) or .jsonl files ({"text", "id", "metadata"})',
    )
    index.add_argument("--out", required=True, help="index directory to write")
    index.add_argument("--model", default=None, help="model folder (default: bundled SmolLM2)")
    index.add_argument("--sae", default=None, help="SAE bundle folder (default: shipped one)")
    index.add_argument(
        "--compact",
        action="store_true",
        help="a small index: postings of the shipped compact SAEs only, scored through the SAE "
        "(~12x smaller than stored keys, ~95%% of their recall)",
    )
    index.add_argument("--append", action="store_true", help="add to an existing index")
    index.add_argument(
        "--resume",
        action="store_true",
        help="continue an interrupted run: skip documents whose ids the index already holds",
    )
    index.add_argument(
        "--commit-every",
        type=int,
        default=200,
        help="save the index after this many documents (default 200); a killed run loses at "
        "most one batch",
    )
    index.add_argument(
        "--follow-links",
        action="store_true",
        help="follow symbolic links inside input folders that lead outside them (skipped with a "
        "warning by default: a link to a secret file would put it in the index)",
    )
    index.add_argument(
        "--quiet", action="store_true", help="no progress bar (by default one only on a terminal)"
    )
    index.add_argument(
        "--shards",
        type=int,
        default=None,
        help="build a sharded index of N shards on Ray (s3_retriever.distributed; needs the "
        "ray extra); running it again resumes an interrupted build",
    )
    index.add_argument(
        "--ray", default=None, help="Ray cluster address (default: start a local one)"
    )
    index.add_argument(
        "--actors", type=int, default=1, help="--shards: scan actors, one model each (default 1)"
    )
    index.set_defaults(run=_cmd_index)

    query = sub.add_parser(
        "query",
        help="retrieve evidence spans for questions, best first",
        description="Print the evidence spans for each question, best first with their rank. "
        "One question prints text; several (arguments, or one per line on stdin when none is "
        "given) print one JSON line each, {question, hits}, with the model loaded once.",
    )
    query.add_argument("index", help="index directory")
    query.add_argument(
        "questions", nargs="*", metavar="question", help="questions (default: read from stdin)"
    )
    query.add_argument(
        "--token-budget",
        "--budget",
        dest="token_budget",
        type=int,
        default=512,
        help="model tokens of all spans returned for a question (default 512)",
    )
    query.add_argument(
        "--mode",
        choices=("hybrid", "s3", "bm25"),
        default="hybrid",
        help="hybrid: the model's attention fused with BM25 (default); s3: attention only; "
        "bm25: words only",
    )
    query.add_argument("--top-k", type=int, default=None, help="keep at most this many spans")
    query.add_argument(
        "--filter",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="only documents whose metadata KEY equals VALUE (JSON or text; doc_id for ids); "
        "repeat a key to allow several values, repeat keys to require each",
    )
    query.add_argument(
        "--order",
        choices=("score", "document"),
        default="score",
        help="score: best first (default); document: in reading order",
    )
    query.add_argument("--model", default=None, help="model folder the index was built with")
    query.add_argument("--json", action="store_true", help="JSON lines even for one question")
    query.add_argument("--ray", default=None, help="Ray cluster of a sharded index's actors")
    query.set_defaults(run=cmd_query)

    serve = sub.add_parser("serve", help="answer queries over HTTP from a loaded index")
    serve.add_argument("index", help="index directory (single or sharded)")
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on")
    serve.add_argument("--port", type=int, default=8000, help="port (0: any free one)")
    serve.add_argument("--model", default=None, help="model folder the index was built with")
    serve.add_argument("--ray", default=None, help="Ray cluster of a sharded index's actors")
    serve.set_defaults(run=cmd_serve)

    evaluate = sub.add_parser(
        "eval",
        help="evidence recall, answer recall and QA F1 of every method at matched budgets",
        description="Evaluate retrieval methods on the shared evaluation data at matched token "
        "budgets and write <out>.json, <out>.md and <out>.png.",
    )
    evaluate.add_argument("--data", default=None, help="evaluation data folder (see docs)")
    evaluate.add_argument(
        "--tasks",
        default="hotpotqa-3k",
        help=f"comma-separated task names: {', '.join(_eval_task_names())} (default hotpotqa-3k)",
    )
    evaluate.add_argument(
        "--methods",
        default="s3:exact,hybrid:exact,bm25,dense,bm25+dense,full",
        help="comma-separated: s3:<scorer>, hybrid:<scorer>, bm25, dense, bm25+dense, full",
    )
    evaluate.add_argument("--budgets", default="256,512,1024,2048", help="token budgets")
    evaluate.add_argument("--n", type=int, default=60, help="questions per task")
    evaluate.add_argument("--skip", type=int, default=0, help="questions to skip first")
    evaluate.add_argument("--model", default=None, help="scan model (default: bundled SmolLM2)")
    evaluate.add_argument("--sae", default=None, help="SAE bundle (default: the shipped one)")
    evaluate.add_argument(
        "--set",
        dest="overrides",
        action="append",
        default=[],
        metavar="SECTION.FIELD=VALUE",
        help="change one retriever setting, e.g. spans.smooth_width=7 (repeatable)",
    )
    evaluate.add_argument(
        "--sweep",
        default=None,
        metavar="SECTION.FIELD=V1,V2",
        help="one result set per value (an ablation), e.g. hybrid.fusion=zsum,rrf,union",
    )
    evaluate.add_argument(
        "--qa-budgets", default="", help="budgets for end-to-end QA, e.g. 2048 (none: no QA)"
    )
    evaluate.add_argument("--generator", default=None, help="QA model (default: scan model)")
    evaluate.add_argument(
        "--index-cache", default=None, metavar="DIR", help="save built indexes here for reuse"
    )
    evaluate.add_argument("--out", required=True, help="output path stem (.json, .md, .png)")
    evaluate.set_defaults(run=cmd_eval)

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
        choices=("reconstruction", "attention", "mixed"),
        default="reconstruction",
        help="SAE loss: plain key reconstruction, error of q.k for the questions' queries, or a "
        "mix of the two (--logit-weight)",
    )
    train.add_argument(
        "--logit-weight", type=float, default=0.5, help="--metric mixed: weight of the q.k term"
    )
    train.add_argument(
        "--key-heads",
        choices=("all", "retrieval"),
        default="all",
        help="train each layer's key SAE on all its KV heads, or only those --heads read",
    )
    train.add_argument(
        "--key-coding",
        choices=("encoder", "pursuit"),
        default="encoder",
        help="how indexes code keys into postings: the SAE's encoder, or matching pursuit over "
        "its atoms (closer codes of the same size; the atoms are then fitted to pursuit codes)",
    )
    train.add_argument(
        "--pursuit-rounds",
        type=int,
        default=24,
        help="--key-coding pursuit: rounds fitting the atoms to pursuit codes after training",
    )
    train.set_defaults(run=cmd_train_sae)

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
    report.set_defaults(run=cmd_sae_report)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point; returns the exit status. Errors print one line, never a traceback."""
    parser = build_parser()
    args = parser.parse_args(argv)
    with warnings.catch_warnings():
        warnings.showwarning = _one_line_warning
        try:
            status: int = args.run(args)
            return status
        except (S3RetrieverError, ValueError, TypeError) as exc:
            print(f"s3-retriever: error: {exc}", file=sys.stderr)
            return 2
        except OSError as exc:
            print(f"s3-retriever: error: {_os_error_line(exc)}", file=sys.stderr)
            return 2
        except KeyboardInterrupt:
            print(
                "s3-retriever: interrupted; the index holds everything up to its last save "
                "(for `index`, rerun with --resume to continue)",
                file=sys.stderr,
            )
            return 130


def _os_error_line(exc: OSError) -> str:
    where = f" ({exc.filename})" if exc.filename else ""
    reason = exc.strerror or str(exc) or type(exc).__name__
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        # A save writes a staging folder first, so the index on disk is still the last one.
        return (
            f"{reason}{where}; the index holds everything up to its last save. Free space and "
            f"rerun (for `index`, with --resume)."
        )
    return f"{reason}{where}"


def _one_line_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: TextIO | None = None,
    line: str | None = None,
) -> None:
    print(f"s3-retriever: warning: {message}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
