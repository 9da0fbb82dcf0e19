"""Top-K SAE maths, bundle persistence, shape checks and a short training run."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from s3_retriever import SAEBundle, SAEConfig, SAEError, TopKSAE
from s3_retriever.sae.bundle import bundle_checksum, fraction_of_variance_unexplained
from s3_retriever.sae.training import TrainConfig, train_topk_sae
from tests.conftest import HEAD_DIM, N_HEADS, N_LATENTS, N_LAYERS, SAE_K, make_bundle


def _random_sae(
    seed: int = 0, d_in: int = HEAD_DIM, n_latents: int = N_LATENTS, k: int = SAE_K
) -> TopKSAE:
    generator = torch.Generator().manual_seed(seed)
    sae = TopKSAE(SAEConfig(d_in=d_in, n_latents=n_latents, k=k))
    with torch.no_grad():
        sae.W_enc.copy_(torch.randn(n_latents, d_in, generator=generator))
        sae.b_enc.copy_(torch.randn(n_latents, generator=generator) * 0.3)
        sae.W_dec.copy_(torch.randn(n_latents, d_in, generator=generator))
        sae.b_dec.copy_(torch.randn(d_in, generator=generator) * 0.3)
    sae.normalize_decoder()
    return sae


def test_encode_matches_naive_topk() -> None:
    """encode() keeps exactly the k largest ReLU pre-activations, computed against b_dec."""
    sae = _random_sae()
    x = torch.randn(50, HEAD_DIM, generator=torch.Generator().manual_seed(1)) * 2
    ids, acts = sae.encode(x)
    assert ids.shape == acts.shape == (50, SAE_K)
    assert ids.dtype == torch.int64
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    ref_acts, ref_ids = torch.topk(pre, SAE_K, dim=-1)
    for row in range(x.shape[0]):
        got = dict(zip(ids[row].tolist(), acts[row].tolist(), strict=True))
        want = dict(zip(ref_ids[row].tolist(), ref_acts[row].tolist(), strict=True))
        assert set(got) == set(want)
        for latent, value in want.items():
            assert got[latent] == pytest.approx(value, rel=1e-5, abs=1e-6)


def test_encode_honours_explicit_k() -> None:
    """encode(x, k) returns k latents, the same as a naive top-k of that size."""
    sae = _random_sae(seed=3)
    x = torch.randn(8, HEAD_DIM, generator=torch.Generator().manual_seed(4))
    ids, acts = sae.encode(x, k=9)
    pre = torch.relu((x - sae.b_dec) @ sae.W_enc.T + sae.b_enc)
    ref_ids = torch.topk(pre, 9, dim=-1).indices
    assert ids.shape == (8, 9)
    for row in range(8):
        assert set(ids[row].tolist()) == set(ref_ids[row].tolist())
        assert torch.allclose(acts[row].sort().values, pre[row, ref_ids[row]].sort().values)


def test_decode_is_explicit_sum() -> None:
    """decode(ids, acts) is sum_j a_j W_dec[j] + b_dec."""
    sae = _random_sae(seed=2)
    generator = torch.Generator().manual_seed(5)
    ids = torch.stack([torch.randperm(N_LATENTS, generator=generator)[:SAE_K] for _ in range(7)])
    acts = torch.rand(7, SAE_K, generator=generator) * 3
    out = sae.decode(ids, acts)
    for row in range(7):
        want = sae.b_dec.clone()
        for j in range(SAE_K):
            want = want + acts[row, j] * sae.W_dec[ids[row, j]]
        assert torch.allclose(out[row], want, atol=1e-5)
    x = torch.randn(3, HEAD_DIM, generator=generator)
    assert torch.allclose(sae(x), sae.decode(*sae.encode(x)))


def test_sae_config_refuses_bad_shapes() -> None:
    """k outside 1..n_latents and non-positive sizes are refused."""
    with pytest.raises(ValueError):
        SAEConfig(d_in=16, n_latents=8, k=9)
    with pytest.raises(ValueError):
        SAEConfig(d_in=16, n_latents=8, k=0)
    with pytest.raises(ValueError):
        SAEConfig(d_in=0, n_latents=8, k=1)


def test_bundle_round_trip(tmp_path: Path) -> None:
    """save() then load() gives identical tensors, heads, info and the same checksum."""
    original = make_bundle("tiny", seed=7)
    original.info = {"note": "round trip", "fvu": [0.1, 0.2]}
    checksum = original.save(tmp_path / "b")
    loaded = SAEBundle.load(tmp_path / "b")
    assert loaded.checksum == checksum == bundle_checksum(tmp_path / "b")
    assert len(checksum) == 64
    assert loaded.model_id == "tiny"
    assert loaded.layers == original.layers
    assert loaded.retrieval_heads == original.retrieval_heads
    assert loaded.info == original.info
    for layer, sae in original.saes.items():
        assert loaded.saes[layer].config == sae.config
        for name, param in sae.named_parameters():
            assert torch.equal(getattr(loaded.saes[layer], name), param), (layer, name)
    for layer, means in original.query_means.items():
        assert torch.equal(loaded.query_means[layer], means)


def test_bundle_checksum_tracks_content(tmp_path: Path) -> None:
    """Different weights give a different checksum; identical weights the same one."""
    a = make_bundle("tiny", seed=1).save(tmp_path / "a")
    b = make_bundle("tiny", seed=1).save(tmp_path / "b")
    c = make_bundle("tiny", seed=2).save(tmp_path / "c")
    assert a == b
    assert a != c
    path = tmp_path / "a" / "layer_01.safetensors"
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))
    assert SAEBundle.load(tmp_path / "a").checksum != a


def test_bundle_load_refuses_missing_and_misshapen(tmp_path: Path) -> None:
    """A folder without config.json, a missing layer file and wrong tensor shapes raise SAEError."""
    with pytest.raises(SAEError, match="config.json"):
        SAEBundle.load(tmp_path / "nothing")
    make_bundle("tiny").save(tmp_path / "b")
    (tmp_path / "b" / "layer_02.safetensors").unlink()
    with pytest.raises(SAEError, match="layer_02"):
        SAEBundle.load(tmp_path / "b")
    bundle = make_bundle("tiny")
    bundle.save(tmp_path / "c")
    config = (tmp_path / "c" / "config.json").read_text()
    (tmp_path / "c" / "config.json").write_text(
        config.replace('"n_latents": 64', '"n_latents": 32')
    )
    with pytest.raises(SAEError, match="tensors"):
        SAEBundle.load(tmp_path / "c")


def test_check_fits_accepts_matching_model() -> None:
    """The fixture bundle fits the tiny model's shape."""
    make_bundle("tiny").check_fits(N_LAYERS, N_HEADS, HEAD_DIM)


@pytest.mark.parametrize(
    ("n_layers", "n_heads", "head_dim", "message"),
    [
        (N_LAYERS, N_HEADS, HEAD_DIM * 2, "head dimension"),
        (2, N_HEADS, HEAD_DIM, "layers"),
        (N_LAYERS, N_HEADS * 2, HEAD_DIM, "Query means"),
    ],
)
def test_check_fits_refuses_other_models(
    n_layers: int, n_heads: int, head_dim: int, message: str
) -> None:
    """Wrong head_dim, too few layers or another head count raise SAEError."""
    with pytest.raises(SAEError, match=message):
        make_bundle("tiny").check_fits(n_layers, n_heads, head_dim)


def test_fvu_definition() -> None:
    """FVU is 0 for a perfect reconstruction and 1 for predicting the mean."""
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(0))
    assert fraction_of_variance_unexplained(x, x) == pytest.approx(0.0, abs=1e-9)
    mean = x.mean(dim=0, keepdim=True).expand_as(x)
    assert fraction_of_variance_unexplained(x, mean) == pytest.approx(1.0, rel=1e-5)


def test_training_learns_sparse_data() -> None:
    """A short run on k-sparse synthetic data drives FVU well below 1 with unit-norm atoms."""
    generator = torch.Generator().manual_seed(0)
    d_in, n_true, n = 16, 24, 4000
    truth = torch.randn(n_true, d_in, generator=generator)
    truth = truth / truth.norm(dim=-1, keepdim=True)
    picks = torch.stack([torch.randperm(n_true, generator=generator)[:2] for _ in range(n)])
    coefs = torch.rand(n, 2, generator=generator) * 2 + 0.5
    data = (coefs.unsqueeze(-1) * truth[picks]).sum(dim=1) + 0.3
    result = train_topk_sae(
        data,
        SAEConfig(d_in=d_in, n_latents=48, k=4),
        TrainConfig(steps=300, batch_size=256, lr=5e-3, dead_after=20_000),
    )
    norms = result.sae.W_dec.norm(dim=-1)
    assert torch.allclose(norms, torch.ones_like(norms), atol=1e-4)
    with torch.no_grad():
        fvu = fraction_of_variance_unexplained(data, result.sae(data))
    assert fvu < 0.15
    assert result.train_fvu < 0.2
    assert 0.0 <= result.dead_fraction <= 1.0
    assert not result.sae.W_dec.requires_grad


def test_bundle_key_maps_round_trip(tmp_path: Path) -> None:
    """Key maps are saved, loaded back unchanged and covered by the checksum."""
    plain = make_bundle("tiny", seed=1)
    plain_checksum = plain.save(tmp_path / "plain")
    mapped = make_bundle("tiny", seed=1)
    mapped.key_maps = {1: torch.eye(HEAD_DIM) * 2.0}
    mapped_checksum = mapped.save(tmp_path / "mapped")
    assert mapped_checksum != plain_checksum
    loaded = SAEBundle.load(tmp_path / "mapped")
    assert set(loaded.key_maps) == {1}
    assert torch.equal(loaded.key_maps[1], mapped.key_maps[1])
    assert SAEBundle.load(tmp_path / "plain").key_maps == {}


def test_bundle_saved_over_mapped_bundle_has_no_maps(tmp_path: Path) -> None:
    """Saving a bundle without key maps over one with maps gives back a bundle without maps."""
    mapped = make_bundle("tiny", seed=1)
    mapped.key_maps = {1: torch.eye(HEAD_DIM) * 2.0}
    mapped.save(tmp_path / "b")
    make_bundle("tiny", seed=1).save(tmp_path / "b")
    assert SAEBundle.load(tmp_path / "b").key_maps == {}
