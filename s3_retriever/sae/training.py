"""Training Top-K SAEs on captured pre-RoPE keys (and values), with the established recipe.

- the decoder bias starts at the data mean and is subtracted before encoding;
- the encoder starts as the decoder's transpose;
- decoder atoms stay at unit norm, and the gradient along each atom is removed;
- an auxiliary Top-K loss on dead latents (Gao et al., 2024) brings them back.

Runs can be checkpointed and resumed exactly (:mod:`s3_retriever.sae.checkpoint`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from s3_retriever.console import progress_bar
from s3_retriever.sae.bundle import (
    SAEConfig,
    TopKSAE,
    fraction_of_variance_unexplained,
)
from s3_retriever.sae.checkpoint import (
    TrainingState,
    load_checkpoint,
    run_settings,
    save_checkpoint,
)
from s3_retriever.sae.pursuit import code_vectors


@dataclass(frozen=True)
class TrainConfig:
    """Optimisation settings for one SAE."""

    steps: int = 3000
    """Optimiser steps."""
    batch_size: int = 4096
    """Vectors per step."""
    lr: float = 1e-3
    """Adam learning rate (the S3 paper used 1e-3)."""
    dead_after: int = 200_000
    """A latent is dead once it has not fired for this many training vectors."""
    aux_k: int = 64
    """Dead latents used by the auxiliary loss."""
    aux_coef: float = 1 / 32
    """Weight of the auxiliary loss."""
    seed: int = 0
    """Seed for initialisation and batch order."""


@dataclass(frozen=True)
class TrainResult:
    """What one training run produced."""

    sae: TopKSAE
    """The trained SAE."""
    train_fvu: float
    """FVU on the last training batch."""
    dead_fraction: float
    """Share of latents that never fired in the last ``dead_after`` vectors."""


def _progress(total: int, show: bool) -> Any:
    # show=True still draws only on a terminal (s3_retriever/console.py).
    return progress_bar(total, "training SAE", "step", None if show else False, leave=False)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_topk_sae(
    vectors: torch.Tensor,
    sae_config: SAEConfig,
    config: TrainConfig | None = None,
    show_progress: bool = False,
    device: str | torch.device | None = None,
    checkpoint: str | os.PathLike[str] | None = None,
    resume: bool = False,
    checkpoint_every: int = 250,
) -> TrainResult:
    """Train one Top-K SAE on a (n, d_in) float tensor of vectors.

    Training runs on ``device`` (default: CUDA when present, else CPU); the returned SAE is on
    the CPU. Initialisation and batch order come from a CPU generator, so a seed draws the same
    batches on every device.

    With ``checkpoint`` (a file path) the run's whole state is saved there every
    ``checkpoint_every`` steps and at the end; ``resume=True`` continues from that file when it
    exists, so that the result equals an uninterrupted run of ``config.steps`` steps.
    """
    config = config or TrainConfig()
    device = torch.device(device or default_device())
    generator = torch.Generator().manual_seed(config.seed)
    data = vectors.to(device, torch.float32)
    sae = TopKSAE(sae_config)
    with torch.no_grad():
        atoms = torch.randn(sae_config.n_latents, sae_config.d_in, generator=generator)
        sae.W_dec.copy_(atoms / atoms.norm(dim=-1, keepdim=True))
        sae.W_enc.copy_(sae.W_dec)
    sae.to(device)
    with torch.no_grad():
        sae.b_dec.copy_(data.mean(dim=0))
    optimiser = torch.optim.Adam(sae.parameters(), lr=config.lr, eps=6.25e-10)
    since_fired = torch.zeros(sae_config.n_latents, dtype=torch.long, device=device)
    scale = (data - data.mean(dim=0)).pow(2).sum(dim=-1).mean()
    fvu = float("nan")
    state = TrainingState(sae, optimiser, since_fired, generator)
    settings = run_settings(sae_config, config, data) if checkpoint is not None else {}
    if checkpoint is not None and resume and Path(checkpoint).is_file():
        load_checkpoint(checkpoint, state, settings)
        fvu = state.train_fvu
    progress = _progress(config.steps, show_progress)
    if progress is not None:
        progress.update(state.step)
    for step in range(state.step, config.steps):
        rows = torch.randint(0, data.shape[0], (config.batch_size,), generator=generator)
        x = data[rows.to(device)]
        pre = sae.pre_activations(x)
        acts, ids = pre.topk(sae_config.k, dim=-1, sorted=False)
        # A dense code times the dictionary is one matmul forward and backward; gathering atoms
        # per row instead makes the backward a serial scatter-add, ~50x slower on CPU.
        code = torch.zeros_like(pre).scatter(-1, ids, acts)
        x_hat = code @ sae.W_dec + sae.b_dec
        residual = x - x_hat
        loss = residual.pow(2).sum(dim=-1).mean() / scale
        fired = torch.zeros(sae_config.n_latents, dtype=torch.bool, device=device)
        fired[ids.flatten()] = True
        since_fired += config.batch_size
        since_fired[fired] = 0
        dead = since_fired > config.dead_after
        if dead.any():
            # AuxK: the dead latents' best guess at the residual teaches them to be useful again.
            dead_pre = pre.masked_fill(~dead, 0.0)
            k_aux = min(config.aux_k, int(dead.sum()))
            aux_acts, aux_ids = dead_pre.topk(k_aux, dim=-1, sorted=False)
            aux_hat = torch.zeros_like(pre).scatter(-1, aux_ids, aux_acts) @ sae.W_dec
            aux_loss = (residual.detach() - aux_hat).pow(2).sum(dim=-1).mean() / scale
            loss = loss + config.aux_coef * aux_loss
        optimiser.zero_grad(set_to_none=True)
        loss.backward()
        _remove_parallel_gradient(sae)
        optimiser.step()
        sae.normalize_decoder()
        if step % 50 == 0 or step == config.steps - 1:
            fvu = float(
                residual.detach().pow(2).sum() / (x - x.mean(dim=0)).pow(2).sum().clamp_min(1e-12)
            )
            if progress is not None:
                dead_share = float(dead.float().mean())
                progress.set_postfix(fvu=f"{fvu:.4f}", dead=f"{dead_share:.1%}")
        if progress is not None:
            progress.update(1)
        if checkpoint is not None and (
            (step + 1) % checkpoint_every == 0 or step + 1 == config.steps
        ):
            state.step, state.train_fvu = step + 1, fvu
            save_checkpoint(checkpoint, state, settings)
    if progress is not None:
        progress.close()
    sae.cpu().eval().requires_grad_(False)
    dead_fraction = float((since_fired > config.dead_after).float().mean())
    return TrainResult(sae=sae, train_fvu=fvu, dead_fraction=dead_fraction)


@torch.no_grad()
def _remove_parallel_gradient(sae: TopKSAE) -> None:
    # The norm constraint is enforced after each step; removing the radial gradient first keeps
    # Adam from spending its step on a direction that renormalisation undoes.
    grad = sae.W_dec.grad
    if grad is None:
        return
    parallel = (grad * sae.W_dec).sum(dim=-1, keepdim=True)
    grad.sub_(parallel * sae.W_dec)


def held_out_fvu(sae: TopKSAE, vectors: torch.Tensor, coding: str = "encoder") -> float:
    """FVU of ``sae`` on vectors it did not train on, coded by its encoder or by pursuit."""
    with torch.no_grad():
        return fraction_of_variance_unexplained(
            vectors, sae.decode(*code_vectors(sae, vectors, coding))
        )


def attention_metric(queries: torch.Tensor, ridge: float = 1e-3) -> torch.Tensor:
    """Symmetric ``A = C^(1/2)``, ``C = E[q q^T]`` plus a small ridge, scaled to mean eigenvalue 1.

    Training on ``A k`` makes squared reconstruction error equal the expected squared error of
    ``q.k`` over these queries, since ``(A^-1 q).(A k) = q.k``.
    """
    q = queries.double()
    second = q.T @ q / max(q.shape[0], 1)
    second += (
        ridge * torch.trace(second) / second.shape[0] * torch.eye(second.shape[0], dtype=q.dtype)
    )
    values, vectors = torch.linalg.eigh(second)
    root = (vectors * values.clamp_min(0).sqrt()) @ vectors.T
    return (root / values.clamp_min(0).sqrt().mean()).float()
