"""The CUDA paths against the CPU: indexing on a GPU and SAE training on a GPU.

Skipped where no GPU is visible (CI); run on a GPU machine with ``pytest tests/model/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from s3_retriever import S3Retriever, SAEBundle, SAEConfig, ScanConfig
from s3_retriever.model.loading import load_model
from s3_retriever.sae.training import TrainConfig, train_topk_sae
from s3_retriever.testing import tiny_config
from tests.index.test_key_encoding import assert_same_postings

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


def test_gpu_index_matches_cpu_index(
    model_dir: Path, bundle: SAEBundle, corpus: dict[str, str]
) -> None:
    """Same postings and int8 keys from a GPU scan as from a CPU scan (float32 model, no TF32)."""
    config = tiny_config(scan=ScanConfig(chunk_size=16, batch_size=3, show_progress=False))
    texts = list(corpus.values())
    built = {}
    for device in ("cpu", "cuda"):
        loaded = load_model(model_dir, dtype="float32", device=device)
        retriever = S3Retriever(loaded, bundle, config)
        retriever.add_documents(texts, ids=[str(i) for i in range(len(texts))])
        built[device] = retriever
    cpu, gpu = built["cpu"], built["cuda"]
    for f in cpu.fields:
        assert_same_postings(cpu.index.postings[f], gpu.index.postings[f])
        codes_a, codes_b = cpu.index.key_stores[f].codes, gpu.index.key_stores[f].codes
        assert np.abs(codes_a.astype(int) - codes_b.astype(int)).max() <= 1
    question = "When does the train leave?"
    cpu_hits = [
        (h.doc_id, h.start_char) for h in cpu.retrieve(question, token_budget=60, mode="s3")
    ]
    gpu_hits = [
        (h.doc_id, h.start_char) for h in gpu.retrieve(question, token_budget=60, mode="s3")
    ]
    assert cpu_hits == gpu_hits and cpu_hits


def test_sae_training_on_gpu_follows_cpu() -> None:
    """Same seed, same batches: GPU and CPU training reach the same loss, and the SAE comes home."""
    generator = torch.Generator().manual_seed(0)
    basis = torch.randn(8, 16, generator=generator)
    data = torch.randn(4000, 8, generator=generator) @ basis
    config = SAEConfig(d_in=16, n_latents=64, k=4)
    train = TrainConfig(steps=200, batch_size=256)
    cpu = train_topk_sae(data, config, train, device="cpu")
    gpu = train_topk_sae(data, config, train, device="cuda")
    assert gpu.sae.W_dec.device.type == "cpu"
    assert gpu.train_fvu < 0.5
    assert gpu.train_fvu == pytest.approx(cpu.train_fvu, abs=0.05)


def test_pursuit_refinement_on_gpu_follows_cpu() -> None:
    """Fitting atoms to pursuit codes on the GPU (a copy, written back to the CPU SAE) gives the
    atoms a CPU refinement gives, to float32 rounding."""
    from s3_retriever.sae.bundle import TopKSAE
    from s3_retriever.sae.pursuit import refine_for_pursuit

    generator = torch.Generator().manual_seed(0)
    keys = torch.randn(3000, 32, generator=generator)
    atoms = torch.nn.functional.normalize(torch.randn(128, 32, generator=generator), dim=1)
    saes = []
    for _ in range(2):
        sae = TopKSAE(SAEConfig(d_in=32, n_latents=128, k=3)).requires_grad_(False)
        sae.W_dec.copy_(atoms)
        sae.W_enc.copy_(atoms)
        saes.append(sae)
    on_cpu = refine_for_pursuit(saes[0], keys, rounds=3)
    on_gpu = refine_for_pursuit(saes[1], keys, rounds=3, device="cuda")
    assert saes[1].W_dec.device.type == "cpu"
    np.testing.assert_allclose(on_gpu, on_cpu, rtol=1e-3)
    torch.testing.assert_close(saes[1].W_dec, saes[0].W_dec, atol=1e-3, rtol=1e-3)
