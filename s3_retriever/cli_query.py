"""``s3-retriever query``: questions from arguments or stdin, answered with one model load.

One question prints ranked text; several, or questions read from stdin (one a line), print one
JSON line each, ``{"question": ..., "hits": [...]}``, as soon as each is answered.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from s3_retriever.errors import CLIError

if TYPE_CHECKING:
    from s3_retriever.retriever import Hit


def cmd_query(args: argparse.Namespace) -> int:
    """``s3-retriever query``: evidence spans for each question, best first."""
    from s3_retriever.retriever import S3Retriever

    filters = _parse_filters(args.filter)
    retriever = S3Retriever.load(Path(args.index), model_path=args.model)
    # Several questions (or questions on stdin) answer one JSON line each: one model load.
    questions: Iterator[str] = iter(args.questions) if args.questions else _stdin_lines()
    as_json = args.json or len(args.questions) != 1
    answered = 0
    for question in questions:
        hits = retriever.retrieve(
            question,
            token_budget=args.token_budget,
            mode=args.mode,
            top_k=args.top_k,
            filters=filters,
            order=args.order,
        )
        answered += 1
        if as_json:
            rows = [_hit_row(rank, hit) for rank, hit in enumerate(hits, start=1)]
            print(json.dumps({"question": question, "hits": rows}, ensure_ascii=False), flush=True)
        else:
            _print_hits(hits)
    if answered == 0:
        raise CLIError("no question given: pass questions as arguments or one per line on stdin")
    return 0


def _stdin_lines() -> Iterator[str]:
    """Non-blank lines of stdin, each as soon as it arrives (so a pipe gets answers as it goes)."""
    for line in sys.stdin:
        if line.strip():
            yield line.strip()


def _hit_row(rank: int, hit: Hit) -> dict[str, Any]:
    return {
        "rank": rank,
        "id": hit.id,
        "doc_id": hit.doc_id,
        "start_char": hit.start_char,
        "end_char": hit.end_char,
        "relevance": hit.relevance,
        "score": hit.score,
        "scores": hit.scores,
        "text": hit.text,
    }


def _print_hits(hits: Sequence[Hit]) -> None:
    if not hits:
        print("no evidence found")
    for rank, hit in enumerate(hits, start=1):
        parts = " ".join(f"{k}={v:.4g}" for k, v in hit.scores.items())
        print(
            f"{rank}. [{hit.doc_id} {hit.start_char}:{hit.end_char}] "
            f"relevance={hit.relevance:.2f} score={hit.score:.4g} {parts}"
        )
        print("    " + hit.text.replace("\n", "\n    "))


def _parse_filters(items: Sequence[str]) -> dict[str, Any] | None:
    """``--filter key=value`` options as core filters; a key given twice matches either value.

    A value that reads as JSON (``2021``, ``true``, ``"a b"``) is that value, else the text.
    """
    filters: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise CLIError(f"--filter takes key=value, e.g. --filter source=a.txt; got {item!r}")
        key = key.strip()
        value: Any = raw
        if key != "doc_id":  # document ids are always text
            with contextlib.suppress(json.JSONDecodeError):
                value = json.loads(raw)
        filters.setdefault(key, []).append(value)
    if not filters:
        return None
    return {key: values[0] if len(values) == 1 else values for key, values in filters.items()}
