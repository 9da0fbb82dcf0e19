"""The retriever protocols: every kind of retriever takes the same arguments, and objects that
are not retrievers are refused with a message that says what is missing."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from s3_retriever import S3Retriever
from s3_retriever.distributed.retriever import ShardedRetriever
from s3_retriever.protocols import (
    RETRIEVE_KEYWORDS,
    SupportsDocuments,
    SupportsRetrieve,
    check_retriever,
    check_writable,
)
from s3_retriever.serving import RemoteRetriever

KINDS = (S3Retriever, ShardedRetriever, RemoteRetriever)


def _parameters(function: Any, names: tuple[str, ...]) -> list[tuple[str, Any, Any]]:
    parameters = inspect.signature(function).parameters
    return [(n, parameters[n].kind, parameters[n].default) for n in ("self", *names)]


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.__name__)
def test_retrieve_has_the_protocols_parameters_defaults_and_kinds(kind: type) -> None:
    names = ("query", *RETRIEVE_KEYWORDS)
    assert _parameters(kind.retrieve, names) == _parameters(SupportsRetrieve.retrieve, names)
    assert list(inspect.signature(kind.retrieve).parameters)[: len(names) + 1] == [
        "self",
        *names,
    ]


@pytest.mark.parametrize("kind", (S3Retriever, ShardedRetriever), ids=lambda k: k.__name__)
def test_add_documents_and_delete_have_the_protocols_parameters(kind: type) -> None:
    names = ("texts", "ids", "metadatas", "replace")
    want = _parameters(SupportsDocuments.add_documents, names)
    assert _parameters(kind.add_documents, names) == want
    assert _parameters(kind.delete, ("ids",)) == _parameters(SupportsDocuments.delete, ("ids",))


def test_a_remote_retriever_searches_but_cannot_be_written_to() -> None:
    remote = RemoteRetriever("http://127.0.0.1:9")
    assert check_retriever(remote) is remote
    with pytest.raises(TypeError, match="only searches.*S3Retriever or a\\s+ShardedRetriever"):
        check_writable(remote)


def test_objects_that_are_not_retrievers_are_refused_clearly(indexed: S3Retriever) -> None:
    assert check_writable(check_retriever(indexed)) is indexed
    with pytest.raises(TypeError, match="must be an S3Retriever.*got object"):
        check_retriever(object())

    class Sized:
        retrieve = None

        def __len__(self) -> int:
            return 0

    with pytest.raises(TypeError, match="got Sized"):
        check_retriever(Sized())

    class AnyKeyword:
        def retrieve(self, query: str, top_k: int | None = None, **_: Any) -> list[Any]:
            return []

        def __len__(self) -> int:
            return 0

    assert check_retriever(AnyKeyword()) is not None  # takes **kwargs: may accept order

    class NoOrder:
        def retrieve(
            self, query: str, top_k: Any = None, token_budget: int = 1, mode: str = "s3"
        ) -> list[Any]:
            return []

        def __len__(self) -> int:
            return 0

    with pytest.raises(TypeError, match="takes no filters, order keyword"):
        check_retriever(NoOrder(), "retriever")
