"""The command line's sharded and serving commands: ``index --shards``, ``query`` and ``serve``
of a sharded folder (:mod:`s3_retriever.distributed`) or a single index."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from s3_retriever.distributed.opening import open_index
from s3_retriever.errors import CLIError


def cmd_index_sharded(args: argparse.Namespace, total: int) -> int:
    from s3_retriever.distributed import build_index

    if args.append:
        raise CLIError(
            "a sharded build adds new documents and skips indexed ones by itself; drop --append"
        )
    report = build_index(
        args.files,
        args.out,
        args.shards,
        model_path=args.model,
        sae_path=args.sae,
        compact=args.compact,
        ray_address=args.ray,
        num_actors=args.actors,
        commit_every=args.commit_every,
        progress=not args.quiet,
    )
    skipped = f", skipped {report.skipped} already indexed" if report.skipped else ""
    print(
        f"indexed {report.added} of {total} document(s), {report.tokens} tokens{skipped} -> "
        f"{args.out} ({args.shards} shards holding {report.shards} documents)"
    )
    return 0


def cmd_serve(args: argparse.Namespace) -> int:
    from s3_retriever.serving import make_server

    retriever = open_index(Path(args.index), args.model, args.ray)
    server = make_server(retriever, args.host, args.port)
    url = f"http://{args.host}:{server.server_port}"
    print(f"serving {len(retriever)} document(s) on {url} (POST /retrieve)")
    sys.stdout.flush()
    try:
        server.serve_forever()
    finally:
        server.server_close()
    return 0
