"""A small JSON HTTP API over a loaded retriever, and a client with the same ``retrieve``.

``s3-retriever serve DIR`` loads an index once (a single index, or a sharded one whose shards
run as Ray actors) and answers over HTTP, so no call reloads the model::

    POST /retrieve  {"query": "...", "top_k": 4, "token_budget": 1024, "mode": "hybrid",
                     "filters": {"source": "a.txt"}, "order": "score"}
                    -> {"hits": [{"doc_id", "start_char", "end_char", "text", "score",
                                  "metadata", "scores", "relevance"}, ...]}
    GET  /health    -> {"status": "ok", "documents": N}

Every field but ``query`` may be left out and takes ``S3Retriever.retrieve``'s default (``order``:
``document``, by document then position; ``score``: best first, ties in document order). Bad
requests get status 400 with ``{"error": "..."}``. :class:`RemoteRetriever` calls the API
and returns :class:`~s3_retriever.Hit` objects, so code written against
``S3Retriever.retrieve`` works against the endpoint unchanged. Only the standard library is used;
the server is threaded and the retrievers serialise their own reads.
"""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from s3_retriever.inputs import retrieve_arguments
from s3_retriever.protocols import RETRIEVE_KEYWORDS, SupportsRetrieve, check_retriever
from s3_retriever.search.filters import Filters
from s3_retriever.search.hits import Hit
from s3_retriever.search.settings import Mode, Order

__all__ = [
    "RemoteRetriever",
    "SupportsRetrieve",
    "hit_from_json",
    "hit_to_json",
    "make_server",
    "running",
]

_MAX_REQUEST_BYTES = 1 << 20


def hit_to_json(hit: Hit) -> dict[str, Any]:
    return asdict(hit)


def hit_from_json(data: dict[str, Any]) -> Hit:
    return Hit(
        doc_id=str(data["doc_id"]),
        start_char=int(data["start_char"]),
        end_char=int(data["end_char"]),
        text=str(data["text"]),
        score=float(data["score"]),
        metadata=dict(data.get("metadata") or {}),
        scores={k: float(v) for k, v in (data.get("scores") or {}).items()},
        relevance=float(data.get("relevance", 0.0)),
    )


_FIELDS = ("query", *RETRIEVE_KEYWORDS)


def make_server(
    retriever: SupportsRetrieve, host: str = "127.0.0.1", port: int = 8000
) -> ThreadingHTTPServer:
    """An HTTP server answering the API above from ``retriever`` (call ``serve_forever``)."""
    check_retriever(retriever)

    class Handler(BaseHTTPRequestHandler):
        def _send(self, status: int, body: dict[str, Any]) -> None:
            data = json.dumps(body, ensure_ascii=False).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "application/json; charset=utf-8")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def do_GET(self) -> None:  # noqa: N802 - the name http.server calls
            if self.path != "/health":
                self._send(404, {"error": "unknown path; use POST /retrieve or GET /health"})
                return
            self._send(200, {"status": "ok", "documents": len(retriever)})

        def do_POST(self) -> None:  # noqa: N802
            if self.path != "/retrieve":
                self._send(404, {"error": "unknown path; use POST /retrieve or GET /health"})
                return
            try:
                request = self._request()
                hits = retriever.retrieve(**request)
            except (ValueError, TypeError) as exc:
                self._send(400, {"error": str(exc)})
                return
            self._send(200, {"hits": [hit_to_json(h) for h in hits]})

        def _request(self) -> dict[str, Any]:
            length = int(self.headers.get("Content-Length") or 0)
            if length > _MAX_REQUEST_BYTES:
                raise ValueError(f"request body over {_MAX_REQUEST_BYTES} bytes")
            try:
                body = json.loads(self.rfile.read(length) or b"null")
            except (json.JSONDecodeError, UnicodeDecodeError) as exc:
                raise ValueError(f"the request body is not JSON ({exc})") from None
            if not isinstance(body, dict) or "query" not in body:
                raise ValueError('the request body must be a JSON object with a "query"')
            unknown = sorted(set(body) - set(_FIELDS))
            if unknown:
                raise ValueError(f"unknown fields {unknown}; known: {', '.join(_FIELDS)}")
            return body

        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
            pass  # one line per request on stderr would drown a busy server's logs

    return ThreadingHTTPServer((host, port), Handler)


@contextmanager
def running(retriever: SupportsRetrieve, host: str = "127.0.0.1", port: int = 0) -> Iterator[str]:
    """Serve ``retriever`` from a thread of this process while the block runs; yields the URL
    (``port=0``: a free port). For tests and notebooks; ``s3-retriever serve`` is the server."""
    server = make_server(retriever, host, port)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://{host}:{server.server_port}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


class RemoteRetriever:
    """``retrieve`` against a running ``s3-retriever serve`` endpoint, e.g.
    ``RemoteRetriever("http://127.0.0.1:8000")``."""

    def __init__(self, url: str, timeout: float = 60.0) -> None:
        self.url = url.rstrip("/")
        self.timeout = timeout

    def retrieve(
        self,
        query: str,
        top_k: int | None = None,
        token_budget: int = 1024,
        mode: Mode = "hybrid",
        filters: Filters | None = None,
        *,
        order: Order = "document",
    ) -> list[Hit]:
        """:meth:`S3Retriever.retrieve`, answered by the server. Arguments are checked here as
        the retriever checks them; the server's errors are raised as ValueError with its
        message."""
        checked = retrieve_arguments(query, top_k, token_budget, mode, order)
        if checked is None:
            return []
        top_k, token_budget = checked
        body: dict[str, Any] = {
            "query": query,
            "top_k": top_k,
            "token_budget": token_budget,
            "mode": mode,
            "order": order,
        }
        if filters is not None:
            body["filters"] = dict(filters)
        answer = self._call("/retrieve", json.dumps(body).encode("utf-8"))
        hits: Sequence[dict[str, Any]] = answer["hits"]
        return [hit_from_json(h) for h in hits]

    def __len__(self) -> int:
        return int(self._call("/health", None)["documents"])

    def _call(self, path: str, data: bytes | None) -> dict[str, Any]:
        request = urllib.request.Request(
            self.url + path, data=data, headers={"Content-Type": "application/json"}
        )
        try:
            with urllib.request.urlopen(request, timeout=self.timeout) as response:
                answer: dict[str, Any] = json.loads(response.read())
                return answer
        except urllib.error.HTTPError as exc:
            try:
                message = json.loads(exc.read()).get("error", str(exc))
            except (json.JSONDecodeError, AttributeError):
                message = str(exc)
            raise ValueError(f"{self.url}{path}: {message}") from None
