"""Pursuit coding of keys: exact non-negative fits, recovery of sparse keys, dictionary updates
that lower the error, a bundle setting that indexes honour and saved indexes are tied to."""

from __future__ import annotations

import dataclasses
import itertools
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from s3_retriever import RetrieverConfig, S3Retriever, ScoringConfig
from s3_retriever.errors import IndexLoadError, SAEError
from s3_retriever.index.key_encoding import KeyEncoder
from s3_retriever.index.postings import Postings, dequantize_activations, quantize_activations
from s3_retriever.model.loading import LoadedModel
from s3_retriever.model.scan import BatchCapture
from s3_retriever.sae.bundle import SAEBundle, SAEConfig, TopKSAE, fraction_of_variance_unexplained
from s3_retriever.sae.pursuit import (
    nonnegative_refit,
    pursuit_encode,
    pursuit_encode_batched,
    refine_for_pursuit,
)
from s3_retriever.sae.recipe import train_bundles
from s3_retriever.sae.training import TrainConfig
from s3_retriever.search.through_sae import coactivation_scores
from tests.conftest import CORPUS, HEAD_DIM, tiny_config


def _unit_atoms(n: int, d: int, seed: int) -> torch.Tensor:
    atoms = torch.randn(n, d, generator=torch.Generator().manual_seed(seed))
    return atoms / atoms.norm(dim=1, keepdim=True)


def _sae_with_atoms(atoms: torch.Tensor, k: int) -> TopKSAE:
    """An SAE whose encoder is the decoder's transpose (the training recipe's initialisation)."""
    sae = TopKSAE(SAEConfig(d_in=atoms.shape[1], n_latents=atoms.shape[0], k=k))
    with torch.no_grad():
        sae.W_dec.copy_(atoms)
        sae.W_enc.copy_(atoms)
    return sae.requires_grad_(False)


def test_refit_equals_least_squares_when_it_is_non_negative() -> None:
    atoms = _unit_atoms(5, 16, seed=1)[None].expand(40, -1, -1)
    acts = torch.rand(40, 5, generator=torch.Generator().manual_seed(2)) + 0.1
    targets = (acts.unsqueeze(-1) * atoms).sum(1) + 0.01 * torch.randn(40, 16)
    expected = torch.linalg.lstsq(atoms.transpose(1, 2), targets.unsqueeze(-1)).solution
    assert (expected > 0).all()
    torch.testing.assert_close(
        nonnegative_refit(atoms, targets), expected.squeeze(-1), atol=1e-4, rtol=1e-4
    )


def test_refit_drops_an_atom_the_target_points_away_from() -> None:
    """Target = d0 - 0.5 d1: least squares wants a negative weight on d1, the refit gives d1 none
    and fits d0 alone, which satisfies the non-negative optimality conditions."""
    atoms = _unit_atoms(2, 16, seed=3)
    target = atoms[0] - 0.5 * atoms[1]
    fitted = nonnegative_refit(atoms[None], target[None])[0]
    assert fitted[1] == 0
    assert fitted[0] == pytest.approx(float(target @ atoms[0]), rel=1e-4)
    residual = target - fitted[0] * atoms[0]
    # No atom left out could lower the error with a positive weight.
    assert float(residual @ atoms[1]) <= 0


def test_pursuit_recovers_sparse_keys_the_encoder_misses() -> None:
    """Keys made of 3 positive atoms of an incoherent dictionary: pursuit codes them almost
    exactly; the SAE's one-shot encoder on the same atoms does not."""
    atoms = _unit_atoms(256, 64, seed=4)
    generator = torch.Generator().manual_seed(5)
    chosen = torch.stack([torch.randperm(256, generator=generator)[:3] for _ in range(500)])
    weights = torch.rand(500, 3, generator=generator) + 0.5
    keys = (weights.unsqueeze(-1) * atoms[chosen]).sum(1)
    sae = _sae_with_atoms(atoms, k=3)
    ids, acts = pursuit_encode(sae, keys)
    assert ids.shape == acts.shape == (500, 3)
    assert (acts >= 0).all()
    assert all(len(set(row.tolist())) == 3 for row in ids)
    pursuit_fvu = fraction_of_variance_unexplained(keys, sae.decode(ids, acts))
    encoder_fvu = fraction_of_variance_unexplained(keys, sae(keys))
    assert pursuit_fvu < 0.01
    assert pursuit_fvu < encoder_fvu / 5


def test_refining_the_atoms_lowers_the_pursuit_error() -> None:
    """Start from a noisy copy of the atoms that made the keys: dictionary updates move the atoms
    back towards them, the FVU falls round by round, and atoms keep unit norm."""
    true_atoms = _unit_atoms(64, 16, seed=6)
    generator = torch.Generator().manual_seed(7)
    chosen = torch.stack([torch.randperm(64, generator=generator)[:2] for _ in range(3000)])
    keys = (torch.rand(3000, 2, 1, generator=generator) * true_atoms[chosen]).sum(1)
    noisy = true_atoms + 0.3 * torch.randn(64, 16, generator=generator)
    sae = _sae_with_atoms(noisy / noisy.norm(dim=1, keepdim=True), k=2)
    history = refine_for_pursuit(sae, keys, rounds=6)
    assert len(history) == 6
    assert history[-1] < 0.5 * history[0]
    assert all(b <= a + 1e-3 for a, b in itertools.pairwise(history))
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))


def test_index_codes_keys_by_the_bundles_coding(bundle: SAEBundle) -> None:
    """A pursuit bundle's index holds exactly the pursuit codes of each key (float16, as stored),
    an encoder bundle's the encoder's."""
    keys = torch.randn(2, 7, 2 * HEAD_DIM, generator=torch.Generator().manual_seed(8))
    batch = BatchCapture(items=[(0, 0, 7), (1, 0, 7)], offset=0, keys={1: keys}, queries={})
    for coding in ("encoder", "pursuit"):
        coded = dataclasses.replace(bundle, key_coding=coding)
        encoder = KeyEncoder(coded, [(1, 0), (1, 1)], HEAD_DIM, torch.device("cpu"), False, True)
        ids, acts = encoder.encode(batch).codes[1]
        vectors = keys.reshape(-1, HEAD_DIM)
        sae = bundle.saes[1]
        want_ids, want_acts = (
            pursuit_encode(sae, vectors) if coding == "pursuit" else sae.encode(vectors)
        )
        assert torch.equal(ids.reshape(-1, sae.config.k).long(), want_ids)
        torch.testing.assert_close(acts.reshape(-1, sae.config.k), want_acts.half())


def test_bundle_keeps_its_coding_and_refuses_an_unknown_one(
    bundle: SAEBundle, tmp_path: Path
) -> None:
    pursuit = dataclasses.replace(bundle, key_coding="pursuit")
    checksum = pursuit.save(tmp_path / "pursuit")
    assert SAEBundle.load(tmp_path / "pursuit").key_coding == "pursuit"
    assert checksum != dataclasses.replace(bundle).save(tmp_path / "encoder")
    assert SAEBundle.load(tmp_path / "encoder").key_coding == "encoder"
    config_path = tmp_path / "pursuit" / "config.json"
    config = json.loads(config_path.read_text())
    config["key_coding"] = "magic"
    config_path.write_text(json.dumps(config))
    with pytest.raises(SAEError, match="key_coding must be one of encoder, pursuit"):
        SAEBundle.load(tmp_path / "pursuit")


def test_saved_pursuit_index_is_tied_to_its_coding(
    loaded: LoadedModel, bundle: SAEBundle, model_dir: Path, tmp_path: Path
) -> None:
    """An index built with pursuit codes answers through the SAE the same after a reload; one
    whose bundle was switched to the encoder coding is refused (its postings would not match)."""
    pursuit = dataclasses.replace(bundle, key_coding="pursuit")
    pursuit.save(tmp_path / "bundle")
    config = tiny_config(scoring=ScoringConfig(scorer="aligned"))
    retriever = S3Retriever(loaded, SAEBundle.load(tmp_path / "bundle"), config)
    retriever.add_documents(list(CORPUS.values()))
    question = "Which station does the small train leave from?"
    before = retriever.retrieve(question, token_budget=64, mode="s3")
    retriever.save(tmp_path / "index")
    again = S3Retriever.load(tmp_path / "index", model_path=model_dir)
    assert again.bundle.key_coding == "pursuit"
    assert again.config.scoring.scorer == "aligned"
    after = again.retrieve(question, token_budget=64, mode="s3")
    assert [(h.doc_id, h.start_char, h.end_char) for h in after] == [
        (h.doc_id, h.start_char, h.end_char) for h in before
    ]
    config_path = tmp_path / "index" / "sae" / "config.json"
    config = json.loads(config_path.read_text())
    config["key_coding"] = "encoder"
    config_path.write_text(json.dumps(config))
    with pytest.raises(IndexLoadError, match="checksum"):
        S3Retriever.load(tmp_path / "index", model_path=model_dir)


def test_pursuit_training_fits_keys_better_than_the_encoder(loaded: LoadedModel) -> None:
    """``key_coding="pursuit"`` on the tiny model: same SAE training, then atoms fitted to
    pursuit codes; held-out FVU below the encoder-coded bundle's, and the bundle says so."""

    def bundles(**options: object):  # type: ignore[no-untyped-def]
        return train_bundles(
            loaded.model, loaded.tokenizer, "tiny", list(CORPUS.values()), [1],
            SAEConfig(d_in=HEAD_DIM, n_latents=32, k=2), TrainConfig(steps=100, batch_size=128),
            max_tokens=10_000, retrieval_heads=[(1, 0)], question_texts=["Where is the station?"],
            **options,
        )  # fmt: skip

    encoder = bundles()
    pursuit = bundles(key_coding="pursuit", pursuit_rounds=4)
    assert pursuit.keys.key_coding == "pursuit" and encoder.keys.key_coding == "encoder"
    (p_report,), (e_report,) = pursuit.reports, encoder.reports
    assert p_report.coding == "pursuit" and e_report.coding == "encoder"
    assert p_report.held_out_fvu < e_report.held_out_fvu
    with pytest.raises(ValueError, match="key_coding must be one of"):
        bundles(key_coding="omp")


def test_quantised_pursuit_activations_stay_close() -> None:
    """Pursuit activations are non-negative, so the postings' log grid keeps them within its
    step (2**(1/16), about 4.4%) like the encoder's."""
    atoms = _unit_atoms(128, 32, seed=9)
    keys = torch.randn(300, 32, generator=torch.Generator().manual_seed(10))
    _, acts = pursuit_encode(_sae_with_atoms(atoms, k=4), keys)
    values = acts.numpy()
    restored = dequantize_activations(quantize_activations(values))
    positive = values > 2.0**-7
    assert positive.mean() > 0.9
    np.testing.assert_allclose(restored[positive], values[positive], rtol=0.03)


def test_compact_needs_a_shipped_compact_bundle(model_dir: Path) -> None:
    """No compact SAEs ship for the tiny model: the error says how to train them."""
    with pytest.raises(SAEError, match="compact SAE bundle.*--key-coding pursuit"):
        S3Retriever.from_pretrained(model_dir, compact=True)


def test_compact_config_keeps_postings_only_and_scores_through_the_sae(
    loaded: LoadedModel, bundle: SAEBundle
) -> None:
    config = RetrieverConfig.compact()
    assert not config.store_keys and config.store_postings
    assert config.scoring.scorer == "aligned"
    retriever = S3Retriever(loaded, dataclasses.replace(bundle, key_coding="pursuit"), config)
    retriever.add_documents(list(CORPUS.values()))
    assert retriever.index.nbytes()["keys"] == 0
    hits = retriever.retrieve("Which station does the small train leave from?", mode="s3")
    assert hits and all(h.text for h in hits)


def test_coactivation_codes_questions_like_the_index() -> None:
    """With a pursuit bundle the paper's feature-id score codes question vectors by pursuit too:
    each question feature adds ``a idf`` at every position where that feature fired."""
    atoms = _unit_atoms(32, 8, seed=11)
    sae = _sae_with_atoms(atoms, k=2)
    generator = torch.Generator().manual_seed(12)
    keys = torch.randn(50, 8, generator=generator)
    postings = Postings(32)
    ids, acts = pursuit_encode(sae, keys)
    postings.append(np.arange(50), ids.numpy(), acts.numpy())
    queries = torch.randn(3, 8, generator=generator).numpy()
    got = coactivation_scores(queries, sae, postings, 50, key_coding="pursuit")
    q_ids, q_acts = pursuit_encode(sae, torch.from_numpy(queries))
    df = np.bincount(ids.numpy().ravel(), minlength=32)
    idf = 1.0 / (np.log1p(df) + 1.0)
    expected = np.zeros(50)
    for latent, weight in zip(q_ids.numpy().ravel(), q_acts.numpy().ravel(), strict=True):
        expected[(ids.numpy() == latent).any(axis=1)] += weight * idf[latent]
    np.testing.assert_allclose(got, expected / expected.sum(), rtol=1e-5, atol=1e-7)
    encoder_scores = coactivation_scores(queries, sae, postings, 50)
    assert not np.allclose(got, encoder_scores)


def test_pursuit_codes_keep_the_leading_shape() -> None:
    """Batched pursuit takes (..., d) like the encoder (the perplexity hooks pass 4-D keys) and
    codes each vector as the 2-D call does."""
    sae = _sae_with_atoms(_unit_atoms(64, 16, seed=13), k=3)
    keys = torch.randn(2, 5, 3, 16, generator=torch.Generator().manual_seed(14))
    ids, acts = pursuit_encode_batched(sae, keys, batch=7)
    assert ids.shape == acts.shape == (2, 5, 3, 3)
    flat_ids, flat_acts = pursuit_encode(sae, keys.reshape(-1, 16))
    assert torch.equal(ids.reshape(-1, 3), flat_ids)
    torch.testing.assert_close(acts.reshape(-1, 3), flat_acts)
    empty_ids, empty_acts = pursuit_encode_batched(sae, torch.zeros(0, 4, 16))
    assert empty_ids.shape == empty_acts.shape == (0, 4, 3)
