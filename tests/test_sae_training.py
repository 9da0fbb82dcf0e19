"""SAE training on a tiny model: loss falls, dead latents revive, values are captured, and a
checkpointed run resumes exactly where it stopped."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s3_retriever.errors import SAEError
from s3_retriever.models import LoadedModel, attention_shape
from s3_retriever.sae import SAEConfig, fraction_of_variance_unexplained
from s3_retriever.sae_training import TrainConfig, collect_vectors, train_topk_sae
from s3_retriever.scan import ScanConfig, tokenize
from tests.conftest import CORPUS

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
