"""The lean CPU forward pass (model/fused_forward.py) against the model's own hooked forward.

Tolerances: in float32 the two paths differ only by summation order, so projections agree to
1e-4 (relative to their scale) and retrieval returns the same hits with scores within 1e-4
relative; in bf16 every key vector keeps a cosine of at least 0.99 to the hooked forward's.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from s3_retriever import S3Retriever
from s3_retriever.model.fused_forward import fused_unsupported_reason
from s3_retriever.model.loading import LoadedModel
from s3_retriever.model.scan import ScanConfig, Scanner, TokenizedText
from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.testing import tiny_config

QUESTIONS = ("Which river floods in spring?", "When do the trains leave?", "the ocean at night")


def _scanners(model: Any, bos: int | None, **scan: Any) -> tuple[Scanner, Scanner]:
    config = ScanConfig(chunk_size=32, batch_size=3, show_progress=False, **scan)
    fused = Scanner(model, (1, 2), (1, 2), config, bos_token_id=bos)
    plain = Scanner(model, (1, 2), (1, 2), dataclasses.replace(config, fused_forward=False), bos)
    assert fused.fused is not None and plain.fused is None
    return fused, plain


def _docs(lengths: tuple[int, ...], vocab: int) -> list[TokenizedText]:
    generator = np.random.default_rng(0)
    docs = []
    for n in lengths:
        ids = generator.integers(3, vocab, n).astype(np.int64)
        offsets = np.arange(n, dtype=np.int64)
        docs.append(TokenizedText(ids, offsets, offsets + 1))
    return docs


def _compare(fused: Scanner, plain: Scanner, docs: list[TokenizedText]) -> list[float]:
    """Largest relative difference per captured tensor; checks both paths saw the same chunks."""
    worst = []
    pairs = zip(
        fused.scan(docs, want_queries=True), plain.scan(docs, want_queries=True), strict=True
    )
    for a, b in pairs:
        assert (a.doc_index, a.token_start) == (b.doc_index, b.token_start)
        assert a.keys.keys() == b.keys.keys() and a.queries.keys() == b.queries.keys()
        for ours, theirs in [
            *zip(a.keys.values(), b.keys.values(), strict=False),
            *zip(a.queries.values(), b.queries.values(), strict=False),
        ]:
            assert ours.shape == theirs.shape
            worst.append(float((ours - theirs).abs().max() / theirs.abs().max()))
    return worst


def test_fused_projections_match_the_hooked_forward(loaded: LoadedModel) -> None:
    fused, plain = _scanners(loaded.model, loaded.tokenizer.bos_token_id)
    # Lengths that leave padded rows and a short tail batch.
    worst = _compare(fused, plain, _docs((70, 5, 33, 64), int(loaded.model.config.vocab_size)))
    assert max(worst) < 1e-4


def test_fused_forward_keeps_bf16_keys(loaded: LoadedModel) -> None:
    model = loaded.model
    bf16 = type(model)(model.config).to(torch.bfloat16).eval()
    bf16.load_state_dict({k: v.to(torch.bfloat16) for k, v in model.state_dict().items()})
    fused, plain = _scanners(bf16, loaded.tokenizer.bos_token_id)
    docs = _docs((64, 20), int(model.config.vocab_size))
    for a, b in zip(fused.scan(docs), plain.scan(docs), strict=True):
        for layer, keys in a.keys.items():
            cosine = torch.nn.functional.cosine_similarity(keys, b.keys[layer], dim=-1)
            assert float(cosine.min()) >= 0.99


def test_fused_forward_handles_projection_biases() -> None:
    """Qwen2 adds biases to the query, key and value projections."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    config = Qwen2Config(
        vocab_size=300,
        hidden_size=64,
        intermediate_size=96,
        num_hidden_layers=3,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=256,
    )
    torch.manual_seed(0)
    model = Qwen2ForCausalLM(config).eval()
    with torch.no_grad():
        for layer in model.model.layers:
            for proj in (layer.self_attn.q_proj, layer.self_attn.k_proj, layer.self_attn.v_proj):
                proj.bias.normal_(0.0, 0.5)
    fused, plain = _scanners(model, bos=1)
    assert max(_compare(fused, plain, _docs((50, 9), 300))) < 1e-4


def test_fused_and_plain_retrievers_return_the_same_hits(
    loaded: LoadedModel, bundle: SAEBundle, corpus: dict[str, str]
) -> None:
    results = []
    for fused_forward in (True, False):
        scan = ScanConfig(
            chunk_size=32, batch_size=2, show_progress=False, fused_forward=fused_forward
        )
        retriever = S3Retriever(loaded, bundle, tiny_config(scan=scan))
        assert (retriever.scanner.fused is not None) is fused_forward
        retriever.add_documents(list(corpus.values()), ids=list(corpus))
        results.append(
            [
                retriever.retrieve(q, token_budget=64, mode=m)
                for q in QUESTIONS
                for m in ("s3", "hybrid")
            ]
        )
    for ours, theirs in zip(*results, strict=True):
        assert [h.id for h in ours] == [h.id for h in theirs]
        assert ours, "the question should retrieve something"
        np.testing.assert_allclose([h.score for h in ours], [h.score for h in theirs], rtol=1e-4)


def test_unsupported_architectures_keep_the_hooked_forward(loaded: LoadedModel) -> None:
    model = loaded.model
    assert fused_unsupported_reason(model, 33) is None
    model.config.model_type = "gemma"
    try:
        assert "gemma" in str(fused_unsupported_reason(model, 33))
        scanner = Scanner(model, (1,), (), ScanConfig(chunk_size=32, show_progress=False))
        assert scanner.fused is None
    finally:
        model.config.model_type = "llama"


@pytest.mark.parametrize("window", [16, None])
def test_a_short_sliding_window_keeps_the_hooked_forward(
    loaded: LoadedModel, window: int | None
) -> None:
    config = loaded.model.config
    before = getattr(config, "sliding_window", None)
    config.sliding_window = window
    try:
        reason = fused_unsupported_reason(loaded.model, 33)
        assert (reason is None) is (window is None)
    finally:
        config.sliding_window = before
