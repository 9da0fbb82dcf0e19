"""Shared offline fixtures: a tiny tokenizer, a tiny random Llama, a tiny SAE bundle, a corpus."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from s3_retriever import (
    RetrieverConfig,
    S3Retriever,
    SAEBundle,
    SAEConfig,
    ScanConfig,
    SpanConfig,
    TopKSAE,
)
from s3_retriever.models import LoadedModel, load_model

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault(
    "HYPOTHESIS_STORAGE_DIRECTORY", os.path.join(tempfile.gettempdir(), "s3-retriever-hypothesis")
)


HIDDEN = 64
N_HEADS = 4
N_KV_HEADS = 2
HEAD_DIM = 16
N_LAYERS = 4
N_LATENTS = 64
SAE_K = 4
SAE_LAYERS = (1, 2)
RETRIEVAL_HEADS = ((1, 0), (2, 3))

TRAINING_TEXT = [
    "The river wound slowly through the valley, past farms and orchards where apples ripened "
    "in the late summer sun. Farmers gathered the harvest before the first autumn rains.",
    "In the old library, scholars studied maps of distant countries, reading about mountains, "
    "deserts and the long journeys of merchants who carried silk, spices and stories.",
    "The committee met on Tuesday to discuss the budget for the new hospital. After a long "
    "debate, the members voted to increase funding for nurses and medical equipment.",
    "Scientists measured the temperature of the ocean at several depths. The results showed "
    "that the water was warmer than expected, which may affect fish and coral reefs.",
    "A small train leaves the station every morning at seven o'clock and arrives in the city "
    "an hour later. Passengers read newspapers, drink coffee and watch the fields go by.",
    "Café, naïve, résumé, façade, jalapeño, Zoë and Ångström keep their accents. Straße and "
    "smørrebrød are written as they are spoken.",
    "東京は日本の首都です。北京は中国の首都です。漢字とかなを混ぜて書きます。",
    "مرحبا بالعالم. هذه جملة باللغة العربية تكتب من اليمين إلى اليسار.",
    "Emoji appear in messages: 😀 🎉 🚀 👍🏽 ❤️ and flags like 🇫🇷 🇯🇵 travel well.",
    "Numbers such as 1984, 3.14159, 42 and 2024-05-17 appear in reports, tables and lists.",
]

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


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: on matrices this small, more threads only add waiting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


_UNIT_TEST_DIR = Path(__file__).resolve().parent


@pytest.fixture(autouse=True)
def _one_thread_for_unit_tests(request: pytest.FixtureRequest) -> Iterator[None]:
    """Unit tests in this folder run single-threaded; subfolders keep their own settings."""
    if Path(str(request.node.path)).resolve().parent != _UNIT_TEST_DIR:
        yield
        return
    with one_thread():
        yield


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
    backend.train_from_iterator(TRAINING_TEXT * 3, trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>"
    )


def save_tiny_model(folder: Path, tokenizer: Any, seed: int) -> Path:
    """Write a random-weight Llama and ``tokenizer`` into ``folder``."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=HIDDEN,
        num_attention_heads=N_HEADS,
        num_key_value_heads=N_KV_HEADS,
        head_dim=HEAD_DIM,
        num_hidden_layers=N_LAYERS,
        intermediate_size=128,
        max_position_embeddings=1024,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    with one_thread():
        torch.manual_seed(seed)
        model = LlamaForCausalLM(config)
        folder.mkdir(parents=True, exist_ok=True)
        model.save_pretrained(folder)
        tokenizer.save_pretrained(folder)
    return folder


def make_bundle(model_id: str, seed: int = 0) -> SAEBundle:
    """Random Top-K SAEs for layers 1 and 2 with unit-norm decoder rows."""
    generator = torch.Generator().manual_seed(seed)
    saes: dict[int, TopKSAE] = {}
    for layer in SAE_LAYERS:
        sae = TopKSAE(SAEConfig(d_in=HEAD_DIM, n_latents=N_LATENTS, k=SAE_K))
        with torch.no_grad():
            atoms = torch.randn(N_LATENTS, HEAD_DIM, generator=generator)
            sae.W_dec.copy_(atoms / atoms.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(torch.randn(N_LATENTS, HEAD_DIM, generator=generator) * 0.5)
            sae.b_enc.copy_(torch.randn(N_LATENTS, generator=generator) * 0.1)
            sae.b_dec.copy_(torch.randn(HEAD_DIM, generator=generator) * 0.1)
        sae.eval().requires_grad_(False)
        saes[layer] = sae
    means = {
        layer: torch.randn(N_HEADS, HEAD_DIM, generator=generator) * 0.1 for layer in SAE_LAYERS
    }
    return SAEBundle(
        model_id=model_id, saes=saes, query_means=means, retrieval_heads=RETRIEVAL_HEADS
    )


@pytest.fixture(scope="session")
def tokenizer() -> Any:
    """A ByteLevel BPE fast tokenizer (about 400 tokens) with <s> / </s>."""
    return _train_tokenizer()


@pytest.fixture(scope="session")
def model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """Folder of the tiny model (seed 0) and its tokenizer."""
    return save_tiny_model(tmp_path_factory.mktemp("tiny-llama"), tokenizer, seed=0)


@pytest.fixture(scope="session")
def other_model_dir(tmp_path_factory: pytest.TempPathFactory, tokenizer: Any) -> Path:
    """Same architecture and folder name as ``model_dir``, different weights (seed 1)."""
    root = tmp_path_factory.mktemp("other")
    return save_tiny_model(root / "tiny-llama0", tokenizer, seed=1)


@pytest.fixture(scope="session")
def loaded(model_dir: Path) -> LoadedModel:
    """The tiny model read back through the package's own loader, in float32."""
    with one_thread():
        return load_model(model_dir, dtype="float32")


@pytest.fixture(scope="session")
def bundle_dir(tmp_path_factory: pytest.TempPathFactory, loaded: LoadedModel) -> Path:
    folder = tmp_path_factory.mktemp("sae-bundle")
    make_bundle(loaded.model_id).save(folder)
    return folder


@pytest.fixture(scope="session")
def bundle(bundle_dir: Path) -> SAEBundle:
    """The tiny SAE bundle loaded from disk, so its checksum is set."""
    return SAEBundle.load(bundle_dir)


def tiny_config(**changes: Any) -> RetrieverConfig:
    """Settings sized for the tiny model and corpus: 32-token chunks, two per batch, and spans
    grown to 24 tokens so a few hundred words still yield several separate spans."""
    scan = changes.pop("scan", ScanConfig(chunk_size=32, batch_size=2, show_progress=False))
    spans = changes.pop("spans", SpanConfig(min_span_tokens=24))
    return RetrieverConfig(scan=scan, spans=spans, **changes)


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
    corpus = retriever.corpus
    row = corpus.doc_ids.index(hit.doc_id)
    units = np.flatnonzero(
        (corpus.unit_doc == row)
        & (corpus.unit_chars[:, 0] >= hit.start_char)
        & (corpus.unit_chars[:, 1] <= hit.end_char)
    )
    return int(corpus.unit_token_counts()[units].sum())
