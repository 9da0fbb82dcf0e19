"""The JSON HTTP API of ``s3-retriever serve`` and the client with ``retrieve``'s signature."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import pytest

from s3_retriever import S3Retriever
from s3_retriever.serving import RemoteRetriever, make_server, running


@pytest.fixture(scope="module")
def endpoint(indexed: S3Retriever) -> Iterator[str]:
    with running(indexed) as url:
        yield url


@pytest.mark.parametrize(
    "kwargs",
    [
        {"mode": "hybrid", "token_budget": 128},
        {"mode": "s3", "token_budget": 64, "top_k": 2},
        {"mode": "bm25", "token_budget": 256, "filters": {"topic": "city"}},
        {"mode": "hybrid", "token_budget": 256, "order": "score"},
        {"mode": "bm25", "token_budget": 256, "top_k": 3, "order": "document"},
    ],
)
def test_the_endpoint_returns_what_the_retriever_returns(
    endpoint: str, indexed: S3Retriever, kwargs: dict[str, Any]
) -> None:
    question = "When does construction of the hospital start?"
    want = indexed.retrieve(question, **kwargs)
    assert want
    assert RemoteRetriever(endpoint).retrieve(question, **kwargs) == want


def test_health_counts_documents(endpoint: str, indexed: S3Retriever) -> None:
    assert len(RemoteRetriever(endpoint)) == len(indexed)


def _post(url: str, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"not json", "not JSON"),
        (b'["a list"]', '"query"'),
        (b'{"query": "x", "budget": 5}', "unknown fields"),
        (b'{"query": "x", "mode": "dense"}', "mode must be one of"),
        (b'{"query": 3}', "query must be a str"),
    ],
)
def test_bad_requests_get_400_with_the_reason(endpoint: str, body: bytes, message: str) -> None:
    status, answer = _post(endpoint + "/retrieve", body)
    assert status == 400 and message in answer["error"]


def test_unknown_paths_get_404(endpoint: str) -> None:
    status, answer = _post(endpoint + "/search", b"{}")
    assert status == 404 and "/retrieve" in answer["error"]
    with pytest.raises(ValueError, match="mode must be one of"):
        RemoteRetriever(endpoint).retrieve("x", mode="dense")  # type: ignore[arg-type]


def test_order_score_comes_back_best_first_and_differs_from_document_order(
    endpoint: str, indexed: S3Retriever
) -> None:
    remote = RemoteRetriever(endpoint)
    question = "When does construction of the hospital start?"
    by_score = remote.retrieve(question, token_budget=256, order="score")
    by_place = remote.retrieve(question, token_budget=256)
    assert [h.score for h in by_score] == sorted((h.score for h in by_score), reverse=True)
    assert sorted(by_score, key=lambda h: h.id) == sorted(by_place, key=lambda h: h.id)
    assert by_score != by_place, "a question whose two orders agree tests nothing"
    status, answer = _post(endpoint + "/retrieve", b'{"query": "x", "order": "random"}')
    assert status == 400 and "order must be one of" in answer["error"]
    with pytest.raises(ValueError, match="order must be one of"):
        remote.retrieve("x", order="random")  # type: ignore[arg-type]


def test_the_client_checks_arguments_as_the_retriever_does(indexed: S3Retriever) -> None:
    # Nothing listens on this port: each call below fails before any request is made.
    remote = RemoteRetriever("http://127.0.0.1:9")
    assert remote.retrieve("   ") == [] == remote.retrieve("x", top_k=0)
    for bad in ({"top_k": 1.5}, {"token_budget": 0}, {"mode": "dense"}):
        with pytest.raises((TypeError, ValueError)) as remote_error:
            remote.retrieve("x", **bad)
        with pytest.raises(type(remote_error.value)) as local_error:
            indexed.retrieve("x", **bad)
        assert str(remote_error.value) == str(local_error.value)


def test_the_server_refuses_what_is_not_a_retriever() -> None:
    with pytest.raises(TypeError, match="must be an S3Retriever"):
        make_server(object(), "127.0.0.1", 0)  # type: ignore[arg-type]
