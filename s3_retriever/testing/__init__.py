"""Helpers for tests of s3-retriever and of code built on it.

They build a tiny, fully offline retriever in a few seconds on a CPU: a ByteLevel BPE tokenizer
trained on a few sentences, a random-weight four-layer Llama, and a bundle of random Top-K SAEs
that fits it. Nothing here downloads anything, and the results are deterministic for a seed.
The retrieval quality of such a retriever is meaningless; it exercises the code paths only.

    from s3_retriever.testing import tiny_retriever

    retriever = tiny_retriever(tmp_path)
    retriever.add_documents(["Some text.", "More text."])
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from s3_retriever.config import RetrieverConfig
from s3_retriever.model.loading import load_model
from s3_retriever.model.scan import ScanConfig
from s3_retriever.retriever import S3Retriever
from s3_retriever.sae.bundle import SAEBundle, SAEConfig, TopKSAE
from s3_retriever.search.spans import SpanConfig

if TYPE_CHECKING:
    from transformers import PreTrainedTokenizerFast

__all__ = [
    "HEAD_DIM",
    "HIDDEN",
    "N_HEADS",
    "N_KV_HEADS",
    "N_LATENTS",
    "N_LAYERS",
    "RETRIEVAL_HEADS",
    "SAE_K",
    "SAE_LAYERS",
    "TRAINING_TEXT",
    "make_tiny_bundle",
    "one_thread",
    "save_tiny_bundle",
    "save_tiny_model",
    "tiny_config",
    "tiny_retriever",
    "tiny_tokenizer",
]

HIDDEN = 64
"""Hidden size of the tiny model."""
N_HEADS = 4
"""Query heads per layer."""
N_KV_HEADS = 2
"""Key/value heads per layer."""
HEAD_DIM = 16
"""Dimension of one attention head."""
N_LAYERS = 4
"""Decoder layers."""
N_LATENTS = 64
"""Latents of each tiny SAE."""
SAE_K = 4
"""Active latents per key in each tiny SAE."""
SAE_LAYERS = (1, 2)
"""Layers that the tiny SAE bundle covers."""
RETRIEVAL_HEADS = ((1, 0), (2, 3))
"""``(layer, head)`` pairs the tiny SAE bundle names as retrieval heads."""

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
"""Sentences the tiny tokenizer is trained on (English, accents, CJK, Arabic, emoji, numbers)."""


@contextmanager
def one_thread() -> Iterator[None]:
    """Run torch on one intra-op thread: on matrices this small, more threads only add waiting."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def tiny_tokenizer() -> PreTrainedTokenizerFast:
    """A ByteLevel BPE fast tokenizer (about 400 tokens) with ``<s>``, ``</s>`` and ``<pad>``."""
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


def save_tiny_model(folder: str | Path, seed: int = 0, tokenizer: Any | None = None) -> Path:
    """Write a random-weight Llama (weights drawn with ``seed``) and its tokenizer to ``folder``.

    ``tokenizer`` defaults to a fresh :func:`tiny_tokenizer`; pass one to skip training it again.
    Returns the folder, which :func:`s3_retriever.model.loading.load_model` and
    :meth:`S3Retriever.from_pretrained` accept.
    """
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = Path(folder)
    if tokenizer is None:
        tokenizer = tiny_tokenizer()
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


def make_tiny_bundle(model_id: str, seed: int = 0) -> SAEBundle:
    """Random Top-K SAEs for the tiny model's layers 1 and 2, with unit-norm decoder rows.

    ``model_id`` must match the model the bundle is used with (``LoadedModel.model_id``; for a
    model loaded from a folder, the folder's name).
    """
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


def save_tiny_bundle(folder: str | Path, model_id: str, seed: int = 0) -> Path:
    """Write :func:`make_tiny_bundle` ``(model_id, seed)`` to ``folder``; returns the folder.

    Load it back with :meth:`SAEBundle.load`, or pass the folder as ``sae_path`` to
    :meth:`S3Retriever.from_pretrained`.
    """
    folder = Path(folder)
    make_tiny_bundle(model_id, seed=seed).save(folder)
    return folder


def tiny_config(**changes: Any) -> RetrieverConfig:
    """Settings sized for the tiny model and small corpora; keyword args go to RetrieverConfig.

    By default: 32-token chunks, two per batch, no progress bar, and spans grown to 24 tokens so
    a few hundred words still yield several separate spans.
    """
    scan = changes.pop("scan", ScanConfig(chunk_size=32, batch_size=2, show_progress=False))
    spans = changes.pop("spans", SpanConfig(min_span_tokens=24))
    return RetrieverConfig(scan=scan, spans=spans, **changes)


def tiny_retriever(workdir: str | Path, **config_changes: Any) -> S3Retriever:
    """A fresh, empty retriever over the tiny model (seed 0) and tiny SAE bundle (seed 0).

    The model goes to ``workdir / "tiny-llama"`` and the bundle to ``workdir / "sae-bundle"``;
    keyword args go to :func:`tiny_config`.
    """
    workdir = Path(workdir)
    model_dir = save_tiny_model(workdir / "tiny-llama")
    with one_thread():
        loaded = load_model(model_dir, dtype="float32")
    bundle_dir = save_tiny_bundle(workdir / "sae-bundle", loaded.model_id)
    return S3Retriever(loaded, SAEBundle.load(bundle_dir), tiny_config(**config_changes))
