"""SAE training on a tiny model: loss falls, dead latents revive, values are captured, a
checkpointed run resumes exactly where it stopped, SAEs can train on the retrieval heads' KV
heads alone or with a logit term, and captured vectors can be cached."""

from __future__ import annotations

import dataclasses
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s3_retriever import S3Retriever
from s3_retriever.errors import SAEError
from s3_retriever.model.loading import LoadedModel, attention_shape
from s3_retriever.model.scan import ScanConfig, tokenize
from s3_retriever.sae.bundle import SAEBundle, SAEConfig, fraction_of_variance_unexplained
from s3_retriever.sae.recipe import TrainedBundles, train_bundles
from s3_retriever.sae.training import TrainConfig, train_topk_sae
from s3_retriever.sae.vector_cache import load_vectors, save_vectors
from s3_retriever.sae.vectors import (
    collect_vectors,
    question_queries,
    retrieval_kv_heads,
    select_kv_heads,
)
from tests.conftest import CORPUS, HEAD_DIM, tiny_config

QUICK = ScanConfig(chunk_size=32, batch_size=3, show_progress=False)


@pytest.fixture(scope="module")
def tiny_keys(loaded: LoadedModel) -> torch.Tensor:
    captured = collect_vectors(loaded.model, loaded.tokenizer, list(CORPUS.values()), [1], 10_000)
    return captured.keys[1]


def test_values_equal_v_proj_of_each_token(loaded: LoadedModel) -> None:
    """Captured values are exactly ``v_proj`` of each token's hidden state, chunk by chunk."""
    texts = list(CORPUS.values())[:2]
    captured = collect_vectors(
        loaded.model, loaded.tokenizer, texts, [1, 2], 10_000, QUICK, want_values=True
    )
    _, _, n_kv, head_dim = attention_shape(loaded.model)
    expected: dict[int, list[torch.Tensor]] = {1: [], 2: []}
    attention = {layer: loaded.model.model.layers[layer].self_attn for layer in (1, 2)}
    seen: dict[int, torch.Tensor] = {}
    handles = [
        attention[layer].v_proj.register_forward_hook(
            lambda _m, _i, out, layer=layer: seen.__setitem__(layer, out.detach())
        )
        for layer in (1, 2)
    ]
    try:
        for text in texts:
            ids = tokenize(loaded.tokenizer, text).input_ids
            for start in range(0, len(ids), QUICK.chunk_size):
                piece = ids[start : start + QUICK.chunk_size]
                batch = torch.as_tensor(np.concatenate([[loaded.tokenizer.bos_token_id], piece]))
                with torch.inference_mode():
                    loaded.model(input_ids=batch[None], use_cache=False)
                for layer in (1, 2):
                    expected[layer].append(seen[layer][0, 1:].reshape(-1, head_dim))
    finally:
        for handle in handles:
            handle.remove()
    n_tokens = sum(len(tokenize(loaded.tokenizer, t)) for t in texts)
    for layer in (1, 2):
        values = captured.values[layer]
        assert values.shape == (n_tokens * n_kv, head_dim)
        reference = torch.cat(expected[layer]).float()
        # Chunks are yielded longest first, so compare as multisets of rows.
        assert torch.allclose(_sorted_rows(values), _sorted_rows(reference), atol=2e-2)
        assert not torch.allclose(values, captured.keys[layer], atol=1e-3)
    assert collect_vectors(loaded.model, loaded.tokenizer, texts, [1], 10_000).values == {}


def _sorted_rows(rows: torch.Tensor) -> torch.Tensor:
    order = np.lexsort(rows.to(torch.bfloat16).float().numpy().T[::-1])
    return rows[torch.as_tensor(order)]


def test_training_on_tiny_model_keys_reduces_loss(tiny_keys: torch.Tensor) -> None:
    """More steps on the tiny model's real keys give a lower held-out FVU."""
    sae_config = SAEConfig(d_in=tiny_keys.shape[1], n_latents=32, k=4)
    fvus = []
    for steps in (1, 200):
        result = train_topk_sae(tiny_keys, sae_config, TrainConfig(steps=steps, batch_size=128))
        with torch.no_grad():
            fvus.append(fraction_of_variance_unexplained(tiny_keys, result.sae(tiny_keys)))
    assert fvus[1] < 0.7 * fvus[0]


def _kill_latents(checkpoint: Path, dead: slice, dead_after: int) -> None:
    """Shrink some latents' encoder rows so they never win the Top-K, and start them dead."""
    with safe_open(str(checkpoint), framework="pt") as handle:
        metadata = handle.metadata()
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    tensors["sae.W_enc"][dead] *= 0.02
    tensors["since_fired"][dead] = dead_after + 1
    save_file(tensors, str(checkpoint), metadata=metadata)


def test_aux_loss_revives_dead_latents(tiny_keys: torch.Tensor, tmp_path: Path) -> None:
    """Latents that never win the Top-K stay dead without the AuxK loss and come back with it."""
    sae_config = SAEConfig(d_in=tiny_keys.shape[1], n_latents=32, k=2)
    dead = slice(0, 16)
    revived, dead_fraction = {}, {}
    for aux_coef in (0.0, 1 / 32):
        config = TrainConfig(steps=1, batch_size=128, dead_after=1280, aux_coef=aux_coef)
        checkpoint = tmp_path / f"aux_{aux_coef}.safetensors"
        train_topk_sae(tiny_keys, sae_config, config, checkpoint=checkpoint)
        _kill_latents(checkpoint, dead, config.dead_after)
        longer = TrainConfig(**{**config.__dict__, "steps": 300})
        result = train_topk_sae(tiny_keys, sae_config, longer, checkpoint=checkpoint, resume=True)
        ids, _ = result.sae.encode(tiny_keys)
        revived[aux_coef] = float(torch.isin(torch.arange(16), ids.unique()).float().mean())
        dead_fraction[aux_coef] = result.dead_fraction
    assert revived[0.0] <= 0.1 and dead_fraction[0.0] >= 0.4
    assert revived[1 / 32] >= 0.5 and dead_fraction[1 / 32] <= 0.3


def test_resumed_run_equals_uninterrupted(tiny_keys: torch.Tensor, tmp_path: Path) -> None:
    """Stopping at step 30 and resuming to 60 gives the weights of a straight 60-step run."""
    sae_config = SAEConfig(d_in=tiny_keys.shape[1], n_latents=32, k=4)
    settings = {"batch_size": 64, "dead_after": 640}
    straight = train_topk_sae(tiny_keys, sae_config, TrainConfig(steps=60, **settings))
    checkpoint = tmp_path / "run.safetensors"
    first = train_topk_sae(
        tiny_keys, sae_config, TrainConfig(steps=30, **settings), checkpoint=checkpoint
    )
    assert not torch.allclose(first.sae.W_dec, straight.sae.W_dec)
    resumed = train_topk_sae(
        tiny_keys,
        sae_config,
        TrainConfig(steps=60, **settings),
        checkpoint=checkpoint,
        resume=True,
        checkpoint_every=7,
    )
    for name, param in straight.sae.named_parameters():
        assert torch.allclose(param, getattr(resumed.sae, name), atol=1e-6), name
    assert resumed.train_fvu == pytest.approx(straight.train_fvu, rel=1e-5)
    assert resumed.dead_fraction == straight.dead_fraction
    # A finished checkpoint resumes to the same result without training further.
    again = train_topk_sae(
        tiny_keys, sae_config, TrainConfig(steps=60, **settings), checkpoint=checkpoint, resume=True
    )
    assert torch.equal(again.sae.W_dec, resumed.sae.W_dec)


def test_resume_refuses_other_run(tiny_keys: torch.Tensor, tmp_path: Path) -> None:
    """A checkpoint of other data, another shape or other settings is refused with a reason."""
    sae_config = SAEConfig(d_in=tiny_keys.shape[1], n_latents=32, k=4)
    checkpoint = tmp_path / "run.safetensors"
    train_topk_sae(tiny_keys, sae_config, TrainConfig(steps=5), checkpoint=checkpoint)
    with pytest.raises(SAEError, match="other vectors"):
        train_topk_sae(
            tiny_keys[:-1], sae_config, TrainConfig(steps=9), checkpoint=checkpoint, resume=True
        )
    with pytest.raises(SAEError, match="shaped"):
        train_topk_sae(
            tiny_keys,
            SAEConfig(d_in=tiny_keys.shape[1], n_latents=32, k=8),
            TrainConfig(steps=9),
            checkpoint=checkpoint,
            resume=True,
        )
    with pytest.raises(SAEError, match="lr"):
        train_topk_sae(
            tiny_keys, sae_config, TrainConfig(steps=9, lr=0.1), checkpoint=checkpoint, resume=True
        )


def test_select_kv_heads_keeps_the_asked_heads_rows() -> None:
    """A token-major (tokens * kv_heads, d) capture gives back exactly the rows of the asked
    heads, in token order; GQA maps query heads to the KV heads they read."""
    tokens, n_kv, dim = 5, 3, 2
    by_token = torch.arange(tokens * n_kv * dim, dtype=torch.float32).reshape(tokens, n_kv, dim)
    flat = by_token.reshape(-1, dim)
    assert torch.equal(select_kv_heads(flat, n_kv, [2]), by_token[:, 2])
    assert torch.equal(select_kv_heads(flat, n_kv, [0, 2]), by_token[:, [0, 2]].reshape(-1, dim))
    assert select_kv_heads(flat, n_kv, [0, 1, 2]) is flat
    with pytest.raises(ValueError, match="whole number"):
        select_kv_heads(flat[:-1], n_kv, [1])
    assert retrieval_kv_heads([(5, 6), (8, 0), (8, 1), (8, 4)], kv_group=3) == {
        5: (2,),
        8: (0, 1),
    }


QUESTIONS = [
    "Which river floods the forest in the rainy season?",
    "When does the small train leave the mountain station?",
    "How many nurses does the hospital budget hire?",
]


def _bundles(loaded: LoadedModel, **options: object) -> TrainedBundles:
    return train_bundles(
        loaded.model,
        loaded.tokenizer,
        "tiny",
        list(CORPUS.values()),
        [1, 2],
        SAEConfig(d_in=HEAD_DIM, n_latents=32, k=2),
        TrainConfig(steps=150, batch_size=128),
        max_tokens=10_000,
        retrieval_heads=[(1, 0), (2, 3)],
        question_texts=QUESTIONS,
        **options,  # type: ignore[arg-type]
    )


def test_retrieval_key_heads_train_on_those_heads_only(loaded: LoadedModel) -> None:
    """``key_heads='retrieval'`` trains each layer's SAE on the one KV head its retrieval head
    reads (here half the rows) and fits those keys better than a shared SAE does."""
    _, n_heads, n_kv, _ = attention_shape(loaded.model)
    captured = collect_vectors(
        loaded.model, loaded.tokenizer, list(CORPUS.values()), [1, 2], 10_000
    )
    shared = _bundles(loaded, captured=captured)
    own = _bundles(loaded, captured=captured, key_heads="retrieval")
    assert own.keys.info["key_kv_heads"] == {"1": [0], "2": [3 // (n_heads // n_kv)]}
    assert shared.keys.info["key_kv_heads"] == {"1": [0, 1], "2": [0, 1]}
    for layer, kv_head in ((1, 0), (2, 1)):
        n_shared = next(r.n_vectors for r in shared.reports if r.layer == layer)
        n_own = next(r.n_vectors for r in own.reports if r.layer == layer)
        assert abs(n_own - n_shared / n_kv) <= 1
        head_keys = select_kv_heads(captured.keys[layer], n_kv, [kv_head])
        with torch.no_grad():
            fvu_own = fraction_of_variance_unexplained(head_keys, own.keys.saes[layer](head_keys))
            fvu_shared = fraction_of_variance_unexplained(
                head_keys, shared.keys.saes[layer](head_keys)
            )
        assert fvu_own < fvu_shared
    with pytest.raises(ValueError, match="retrieval_heads"):
        train_bundles(
            loaded.model, loaded.tokenizer, "tiny", ["text"], [1],
            SAEConfig(d_in=HEAD_DIM, n_latents=32, k=2), key_heads="retrieval",
        )  # fmt: skip


def _logit_error(bundle: SAEBundle, loaded: LoadedModel, keys: torch.Tensor, layer: int) -> float:
    """Mean squared error of ``q.k`` through the SAE for the layer's retrieval head queries."""
    queries = question_queries(loaded.model, loaded.tokenizer, QUESTIONS, [layer])
    head = next(h for lay, h in bundle.retrieval_heads if lay == layer)
    q = (queries[layer][:, head] - bundle.query_means[layer][head]).numpy()
    with torch.no_grad():
        k_hat = bundle.saes[layer](bundle.map_keys(layer, keys)).numpy()
    exact = q @ keys.numpy().T
    through = bundle.map_queries(layer, q) @ k_hat.T
    # Constant shifts per query cancel in the softmax, so compare centred logits.
    error = (exact - exact.mean(axis=1, keepdims=True)) - (
        through - through.mean(axis=1, keepdims=True)
    )
    return float(np.mean(error**2))


def test_mixed_metric_lowers_the_logit_error(loaded: LoadedModel) -> None:
    """The mixed objective maps keys (queries get the inverse map, so q.k is unchanged) and
    reconstructs the logits of the retrieval heads' queries better than plain reconstruction."""
    captured = collect_vectors(
        loaded.model, loaded.tokenizer, list(CORPUS.values()), [1, 2], 10_000
    )
    plain = _bundles(loaded, captured=captured, key_heads="retrieval")
    mixed = _bundles(
        loaded, captured=captured, key_heads="retrieval", metric="mixed", logit_weight=0.9
    )
    assert set(mixed.keys.key_maps) == {1, 2} and not plain.keys.key_maps
    q = np.random.default_rng(0).normal(size=(3, HEAD_DIM)).astype(np.float32)
    k = np.random.default_rng(1).normal(size=(4, HEAD_DIM)).astype(np.float32)
    mapped_k = mixed.keys.map_keys(1, torch.from_numpy(k)).numpy()
    assert np.allclose(mixed.keys.map_queries(1, q) @ mapped_k.T, q @ k.T, atol=1e-3)
    _, _, n_kv, _ = attention_shape(loaded.model)
    for layer, kv_head in ((1, 0), (2, 1)):
        keys = select_kv_heads(captured.keys[layer], n_kv, [kv_head])
        assert _logit_error(mixed.keys, loaded, keys, layer) < _logit_error(
            plain.keys, loaded, keys, layer
        )
    for weight in (0.0, 1.5):
        with pytest.raises(ValueError, match="logit_weight"):
            _bundles(loaded, captured=captured, metric="mixed", logit_weight=weight)


def test_vector_cache_round_trip_and_refusal(loaded: LoadedModel, tmp_path: Path) -> None:
    """Cached keys and values come back exactly; a cache of other settings is refused; training
    from the cache equals training from a fresh scan."""
    texts = list(CORPUS.values())[:2]
    captured = collect_vectors(
        loaded.model, loaded.tokenizer, texts, [1], 10_000, QUICK, want_values=True
    )
    path = tmp_path / "vectors.safetensors"
    settings = {"layers": [1], "texts": "two"}
    save_vectors(path, captured, settings)
    again = load_vectors(path, settings)
    assert torch.equal(again.keys[1], captured.keys[1])
    assert torch.equal(again.values[1], captured.values[1])
    assert again.queries == {}
    with pytest.raises(SAEError, match="settings"):
        load_vectors(path, {"layers": [1, 2], "texts": "two"})
    path.with_name("other.safetensors").write_bytes(b"\x08" + b"\x00" * 7 + b"{}      ")
    with pytest.raises(SAEError, match="vector cache"):
        load_vectors(path.with_name("other.safetensors"), settings)
    from_scan = _bundles(loaded)
    full = collect_vectors(loaded.model, loaded.tokenizer, list(CORPUS.values()), [1, 2], 10_000)
    save_vectors(path, full, settings)
    from_cache = _bundles(loaded, captured=load_vectors(path, settings))
    for layer in (1, 2):
        assert torch.equal(from_scan.keys.saes[layer].W_dec, from_cache.keys.saes[layer].W_dec)


def test_retriever_warns_on_heads_the_sae_was_not_trained_on(
    loaded: LoadedModel, bundle: SAEBundle
) -> None:
    """A bundle trained on some KV heads only warns when retrieval heads read another one, and
    stays silent when they read the trained heads."""
    narrowed = dataclasses.replace(bundle, info={"key_kv_heads": {"1": [0], "2": [1]}})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        S3Retriever(loaded, narrowed, tiny_config(retrieval_heads=((1, 0), (2, 3))))
    with pytest.warns(UserWarning, match=r"\(1, 1\)"):
        S3Retriever(loaded, narrowed, tiny_config(retrieval_heads=((1, 2), (2, 3))))


def test_collection_stops_at_max_tokens_inside_one_long_text(loaded: LoadedModel) -> None:
    """A single text longer than the cap is cut at it: the memory bound holds for one big file."""
    text = " ".join(CORPUS.values()) * 3
    n_tokens = len(tokenize(loaded.tokenizer, text))
    assert n_tokens > 100
    captured = collect_vectors(loaded.model, loaded.tokenizer, [text], [1], 60, QUICK)
    _, _, n_kv, _ = attention_shape(loaded.model)
    assert captured.keys[1].shape[0] == 60 * n_kv
