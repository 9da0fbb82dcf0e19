"""SAE fidelity tools: logit agreement, elbow, and keys or values swapped for reconstructions."""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import numpy as np
import pytest
import torch

from s3_retriever.model.loading import LoadedModel, attention_shape
from s3_retriever.sae.bundle import SAEBundle, SAEConfig
from s3_retriever.sae.fidelity import (
    dual_budget_perplexity,
    elbow,
    logit_fidelity,
    perplexity,
    reconstruct,
    reconstructed_keys,
    reconstructed_projections,
)
from s3_retriever.sae.training import TrainConfig, train_topk_sae


def test_logit_fidelity_perfect_and_degraded() -> None:
    """Identical keys give correlation 1 and full overlap; noise lowers both."""
    generator = torch.Generator().manual_seed(0)
    queries = torch.randn(6, 16, generator=generator)
    keys = torch.randn(200, 16, generator=generator)
    same = logit_fidelity(queries, keys, keys.clone(), top=5)
    assert same.correlation > 0.9999 and same.top_overlap == 1.0
    noisy = logit_fidelity(queries, keys, keys + 2.0 * torch.randn(200, 16, generator=generator))
    assert noisy.correlation < same.correlation and noisy.top_overlap < 1.0


def test_elbow_improves_with_k() -> None:
    """For a trained SAE, more active latents reconstruct better (the elbow curve falls)."""
    generator = torch.Generator().manual_seed(1)
    atoms = torch.nn.functional.normalize(torch.randn(32, 16, generator=generator), dim=-1)
    codes = torch.zeros(3000, 32)
    picks = torch.randint(0, 32, (3000, 4), generator=generator)
    codes.scatter_(1, picks, torch.rand(3000, 4, generator=generator) + 0.5)
    data = codes @ atoms
    trained = train_topk_sae(
        data, SAEConfig(d_in=16, n_latents=32, k=4), TrainConfig(steps=300, batch_size=256)
    ).sae
    bundle = SAEBundle(model_id="synthetic", saes={0: trained}, query_means={})
    curve = elbow(bundle, 0, data[:500], [1, 2, 4])
    assert curve[0] > curve[1] > curve[2]
    assert curve[2] < 0.5
    assert reconstruct(bundle, 0, data[:10], 4).shape == (10, 16)


def test_reconstructed_keys_change_model_and_restore(
    loaded: LoadedModel, bundle: SAEBundle
) -> None:
    """Inside the block the keys are SAE reconstructions; outside the model is untouched."""
    model = loaded.model
    ids = np.arange(3, 40) % model.config.vocab_size
    before = perplexity(model, ids, chunk_size=16)
    with reconstructed_keys(model, bundle):
        during = perplexity(model, ids, chunk_size=16)
    after = perplexity(model, ids, chunk_size=16)
    assert np.isfinite(during) and during != before
    assert after == before
    _, _, n_kv, head_dim = attention_shape(model)
    assert n_kv * head_dim == model.model.layers[0].self_attn.k_proj.out_features


def test_reconstructed_values_change_model_and_restore(
    loaded: LoadedModel, bundle: SAEBundle
) -> None:
    """Values swapped for reconstructions change the model; keys and values differ in effect."""
    model = loaded.model
    ids = np.arange(3, 40) % model.config.vocab_size
    before = perplexity(model, ids, chunk_size=16)
    with reconstructed_projections(model, bundle, "v_proj"):
        values_swapped = perplexity(model, ids, chunk_size=16)
    with reconstructed_projections(model, bundle, "k_proj"):
        keys_swapped = perplexity(model, ids, chunk_size=16)
    assert np.isfinite(values_swapped) and values_swapped != before
    assert values_swapped != keys_swapped
    assert perplexity(model, ids, chunk_size=16) == before
    with (
        pytest.raises(ValueError, match="projection"),
        reconstructed_projections(model, bundle, "q_proj"),
    ):
        pass


def test_dual_budget_rows_match_single_swaps(loaded: LoadedModel, bundle: SAEBundle) -> None:
    """Each budget row holds K-only, V-only and K+V perplexities; k is clamped to the trained k."""
    model = loaded.model
    ids = np.arange(5, 60) % model.config.vocab_size
    trained_k = min(sae.config.k for sae in bundle.saes.values())
    rows = dual_budget_perplexity(model, bundle, bundle, ids, [(1, 2), (1, 100), (1, 100)])
    assert [(r["k_keys"], r["k_values"]) for r in rows] == [(1, 2), (1, trained_k)]
    with reconstructed_projections(model, bundle, "k_proj", 1):
        keys_only = perplexity(model, ids)
    with reconstructed_projections(model, bundle, "v_proj", 2):
        values_only = perplexity(model, ids)
    with (
        reconstructed_projections(model, bundle, "k_proj", 1),
        reconstructed_projections(model, bundle, "v_proj", 2),
    ):
        both = perplexity(model, ids)
    assert rows[0]["keys_only"] == keys_only
    assert rows[0]["values_only"] == values_only
    assert rows[0]["keys_and_values"] == both
    assert len({keys_only, values_only, both}) == 3


def test_pursuit_bundle_reconstructs_keys_in_the_model(
    loaded: LoadedModel, bundle: SAEBundle
) -> None:
    """A pursuit-coded bundle swaps in its pursuit reconstructions (the hooks pass (batch, tokens,
    width) keys), which differ from the encoder's."""
    model = loaded.model
    ids = np.arange(3, 40) % model.config.vocab_size
    pursuit = dataclasses.replace(bundle, key_coding="pursuit")
    with reconstructed_keys(model, pursuit):
        with_pursuit = perplexity(model, ids, chunk_size=16)
    with reconstructed_keys(model, bundle):
        with_encoder = perplexity(model, ids, chunk_size=16)
    assert np.isfinite(with_pursuit) and with_pursuit != with_encoder


def test_per_head_bundle_swaps_only_its_trained_heads(
    loaded: LoadedModel, bundle: SAEBundle
) -> None:
    """A bundle trained on KV head 0 of layer 1 rebuilds that head's keys and leaves head 1's as
    the model made them (an index of that bundle never encodes head 1)."""
    model = loaded.model
    _, _, n_kv, head_dim = attention_shape(model)
    per_head = dataclasses.replace(bundle, info={"key_kv_heads": {"1": [0], "2": [0, 1]}})
    assert per_head.trained_kv_heads(1, n_kv) == [0]
    assert bundle.trained_kv_heads(1, n_kv) == list(range(n_kv))
    seen: list[torch.Tensor] = []
    k_proj = model.model.layers[1].self_attn.k_proj
    ids = torch.arange(3, 20)[None] % model.config.vocab_size

    def run(context: Any) -> torch.Tensor:
        with context:
            handle = k_proj.register_forward_hook(lambda _m, _i, out: seen.append(out.detach()))
            try:
                with torch.no_grad():
                    model(input_ids=ids)
            finally:
                handle.remove()
        return seen[-1].reshape(*seen[-1].shape[:-1], n_kv, head_dim)

    plain = run(contextlib.nullcontext())
    swapped = run(reconstructed_keys(model, per_head))
    assert torch.equal(swapped[..., 1, :], plain[..., 1, :])
    assert not torch.allclose(swapped[..., 0, :], plain[..., 0, :])
