"""Shared offline fixtures: a tiny tokenizer, a tiny random Llama, a tiny SAE bundle, a corpus."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s3_retriever import RetrieverConfig, S3Retriever, SAEBundle
from s3_retriever.model.loading import LoadedModel, load_model
from s3_retriever.testing import (
    HEAD_DIM,
    N_HEADS,
    N_LATENTS,
    N_LAYERS,
    SAE_K,
    one_thread,
    save_tiny_bundle,
    save_tiny_model,
    tiny_config,
    tiny_tokenizer,
)
from s3_retriever.testing import make_tiny_bundle as make_bundle

__all__ = [  # what the test modules import from here
    "HEAD_DIM",
    "N_HEADS",
    "N_LATENTS",
    "N_LAYERS",
    "SAE_K",
    "RetrieverFactory",
    "hit_tokens",
    "make_bundle",
    "one_thread",
    "tiny_config",
]

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "s3-retriever-hypothesis")
)


CORPUS: dict[str, str] = {
    "rivers": (
        "The Amazon River flows across South America and carries more water than any other "
        "river on Earth. Its basin covers large parts of Brazil, Peru and Colombia.\n\n"
        "During the rainy season the river floods the surrounding forest, and fish swim "
        "between the trees. Local communities travel by boat, trading fruit, fish and "
        "medicine along the banks. Scientists estimate that thousands of plant species in the "
        "basin have never been described."
    ),
    "hospital": (
        "Budget Report\n"
        "The city council approved a new budget for the central hospital on Tuesday. The plan "
        "adds forty beds to the emergency ward and hires twelve nurses.\n"
        "Critics argued that the money should fund schools instead. The mayor replied that "
        "waiting times in the emergency ward had doubled since last winter! Construction "
        "starts in March and should finish within two years.\n\n"
        "- forty new beds\n- twelve nurses\n- two years of construction"
    ),
    "trains": (
        "A small train leaves the mountain station every morning at seven o'clock. It climbs "
        "through tunnels and over bridges before it reaches the city an hour later. "
        "Passengers read newspapers and drink coffee while the fields go by. In winter the "
        "line sometimes closes because of snow, and buses replace the train. The railway "
        "company plans to buy two electric trains next year?"
    ),
    "unicode": (
        "Cafe\u0301 menu: cre\u0300me bru\u0302le\u0301e and jalapen\u0303o soup.\t"
        "Prices rose 😀 🎉 in 2024.\x0bThe Tokyo office (東京本社) opened in May.\n"
        "مرحبا بالعالم. هذه جملة باللغة العربية.\n"
        "Family emoji 👨\u200d👩\u200d👧 and flags 🇫🇷🇯🇵 travel well. "
        "Zoë measured 5 Ångström with a façade-mounted sensor.\u2028Done."
    ),
}


_UNIT_TEST_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _one_thread_for_unit_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Unit tests in this folder run single-threaded; subfolders keep their own settings."""
    if Path(str(request.node.path)).resolve().parent != _UNIT_TEST_DIR:
        yield
        return
    with one_thread():
        yield


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """A ByteLevel BPE fast tokenizer (about 400 tokens) with <s> / </s>."""
    return tiny_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """Folder of the tiny model (seed 0) and its tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), seed=0, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """Same architecture and folder name as ``model_dir``, different weights (seed 1)."""
    root = tmp_path_factory.mktemp("other")
    return save_tiny_model(root / "tiny-llama0", seed=1, tokenizer=tokenizer)


@pytest.fixture(scope="session")
def loaded(model_dir: Path) -> LoadedModel:
    """The tiny model read back through the package's own loader, in float32."""
    with one_thread():
        return load_model(model_dir, dtype="float32")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, loaded: LoadedModel) -> Path:
    """Folder of the tiny SAE bundle (seed 0) for the tiny model."""
    return save_tiny_bundle(tmp_path_factory.mktemp("sae-bundle"), loaded.model_id)


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> SAEBundle:
    """The tiny SAE bundle loaded from disk, so its checksum is set."""
    return SAEBundle.load(bundle_dir)


RetrieverFactory = Callable[..., S3Retriever]


@pytest.fixture(scope="session")
def make_retriever(loaded: LoadedModel, bundle: SAEBundle) -> RetrieverFactory:
    """Build a fresh, empty retriever over the tiny model; keyword args go to RetrieverConfig."""

    def build(config: RetrieverConfig | None = None, **changes: Any) -> S3Retriever:
        return S3Retriever(loaded, bundle, config or tiny_config(**changes))

    return build


@pytest.fixture(scope="session")
def corpus() -> dict[str, str]:
    """Four documents: three English, one Unicode-heavy (combining marks, emoji, CJK, RTL)."""
    return dict(CORPUS)


@pytest.fixture(scope="session")
def corpus_metadata() -> dict[str, dict[str, Any]]:
    return {
        "rivers": {"topic": "nature", "year": 2021},
        "hospital": {"topic": "city", "year": 2022},
        "trains": {"topic": "city", "year": 2023},
        "unicode": {"topic": "misc", "year": 2024},
    }


@pytest.fixture(scope="session")
def indexed(
    make_retriever: RetrieverFactory,
    corpus: dict[str, str],
    corpus_metadata: dict[str, dict[str, Any]],
) -> S3Retriever:
    """A retriever (exact scorer) holding the whole corpus. Tests must not modify it."""
    retriever = make_retriever()
    ids = list(corpus)
    with one_thread():
        retriever.add_documents(
            [corpus[i] for i in ids], ids=ids, metadatas=[corpus_metadata[i] for i in ids]
        )
    return retriever


def hit_tokens(retriever: S3Retriever, hit: Any) -> int:
    """Model tokens charged for a hit: the token counts of the units it covers."""
    corpus = retriever.index.corpus
    row = corpus.doc_ids.index(hit.doc_id)
    units = np.flatnonzero(
        (corpus.unit_doc == row)
        & (corpus.unit_chars[:, 0] >= hit.start_char)
        & (corpus.unit_chars[:, 1] <= hit.end_char)
    )
    return int(corpus.unit_token_counts()[units].sum())
