"""Training Top-K SAEs on captured pre-RoPE keys, with the established recipe.

- the decoder bias starts at the data mean and is subtracted before encoding;
- the encoder starts as the decoder's transpose;
- decoder atoms stay at unit norm, and the gradient along each atom is removed;
- an auxiliary Top-K loss on dead latents (Gao et al., 2024) brings them back.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s3_retriever.sae import SAEConfig, TopKSAE, fraction_of_variance_unexplained
from s3_retriever.scan import ScanConfig, Scanner, TokenizedText, tokenize


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
    if not show:
        return None
    from tqdm.auto import tqdm

    return tqdm(total=total, desc="training SAE", unit="step", leave=False)


def default_device() -> str:
    """``cuda`` when a GPU is visible, else ``cpu``."""
    return "cuda" if torch.cuda.is_available() else "cpu"


def train_topk_sae(
    vectors: torch.Tensor,
    sae_config: SAEConfig,
    config: TrainConfig | None = None,
    show_progress: bool = False,
    device: str | torch.device | None = None,
) -> TrainResult:
    """Train one Top-K SAE on a (n, d_in) float tensor of vectors.

    Training runs on ``device`` (default: CUDA when present, else CPU); the returned SAE is on
    the CPU. Initialisation and batch order come from a CPU generator, so a seed draws the same
    batches on every device.
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
    progress = _progress(config.steps, show_progress)
    for step in range(config.steps):
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


@dataclass
class CapturedVectors:
    """Pre-RoPE keys and queries gathered from a corpus, per layer."""

    keys: dict[int, torch.Tensor]
    """layer -> (tokens * kv_heads, head_dim) keys."""
    queries: dict[int, torch.Tensor]
    """layer -> (tokens, query_heads, head_dim) queries."""


def collect_vectors(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    max_tokens: int,
    scan_config: ScanConfig | None = None,
    device: str | torch.device | None = None,
) -> CapturedVectors:
    """Scan ``texts`` (up to ``max_tokens`` tokens) and keep every key and query at ``layers``.

    The scan runs where ``model`` is; the vectors are kept on ``device`` (default: the model's
    device), so a GPU scan can feed GPU training without a round trip through the CPU.
    """
    keep_on = torch.device(device) if device is not None else next(model.parameters()).device
    docs: list[TokenizedText] = []
    total = 0
    for text in texts:
        doc = tokenize(tokenizer, text)
        if len(doc) == 0:
            continue
        docs.append(doc)
        total += len(doc)
        if total >= max_tokens:
            break
    scanner = Scanner(model, layers, layers, scan_config, bos_token_id=tokenizer.bos_token_id)
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    queries: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for capture in scanner.scan(docs, want_queries=True, desc="collecting"):
        for layer in layers:
            k = capture.keys[layer]
            keys[layer].append(k.reshape(-1, k.shape[-1]).to(keep_on, torch.bfloat16))
            queries[layer].append(capture.queries[layer].to(keep_on, torch.bfloat16))
    return CapturedVectors(
        keys={layer: torch.cat(parts).float() for layer, parts in keys.items()},
        queries={layer: torch.cat(parts).float() for layer, parts in queries.items()},
    )


def split_held_out(
    vectors: torch.Tensor, held_out: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, held-out) split of a (n, d) tensor."""
    order = np.random.default_rng(seed).permutation(vectors.shape[0])
    cut = int(len(order) * (1 - held_out))
    return vectors[order[:cut]], vectors[order[cut:]]


def held_out_fvu(sae: TopKSAE, vectors: torch.Tensor) -> float:
    """FVU of ``sae`` on vectors it did not train on."""
    with torch.no_grad():
        return fraction_of_variance_unexplained(vectors, sae(vectors))


@dataclass(frozen=True)
class LayerReport:
    """Fidelity of one layer's SAE."""

    layer: int
    train_fvu: float
    held_out_fvu: float
    dead_fraction: float
    n_vectors: int


def train_bundle(
    loaded_model: Any,
    tokenizer: Any,
    model_id: str,
    texts: Sequence[str],
    layers: Sequence[int],
    sae_config: SAEConfig,
    train_config: TrainConfig | None = None,
    max_tokens: int = 200_000,
    held_out: float = 0.1,
    retrieval_heads: Sequence[tuple[int, int]] = (),
    question_texts: Sequence[str] = (),
    metric: str = "reconstruction",
) -> tuple[Any, list[LayerReport]]:
    """Collect keys from ``texts``, train one SAE per layer, and package an :class:`SAEBundle`.

    Query means (the centres subtracted from question vectors) are the mean pre-RoPE query of
    ``question_texts`` when given, else of the corpus tokens.

    ``metric="attention"`` trains each SAE on keys mapped by ``A = C^(1/2)``, where ``C`` is the
    second moment of the retrieval heads' centred question queries: the SAE's squared error then
    equals the expected squared error of the attention logits ``q.k`` (needs ``question_texts``
    and ``retrieval_heads``).
    """
    if metric not in ("reconstruction", "attention"):
        raise ValueError(f"metric must be 'reconstruction' or 'attention', got {metric!r}")
    if metric == "attention" and not (question_texts and retrieval_heads):
        raise ValueError("metric='attention' needs question_texts and retrieval_heads")
    from s3_retriever.sae import SAEBundle

    captured = collect_vectors(loaded_model, tokenizer, texts, layers, max_tokens, device="cpu")
    asked = question_queries(loaded_model, tokenizer, question_texts, layers)
    if asked:
        query_means = {layer: q.mean(dim=0) for layer, q in asked.items()}
    else:
        query_means = {layer: q.mean(dim=0) for layer, q in captured.queries.items()}
    key_maps: dict[int, torch.Tensor] = {}
    if metric == "attention":
        for layer in layers:
            heads = [h for lay, h in retrieval_heads if lay == layer]
            if heads:
                centred = asked[layer][:, heads] - query_means[layer][heads]
                key_maps[layer] = attention_metric(centred.reshape(-1, centred.shape[-1]))
    saes: dict[int, TopKSAE] = {}
    reports: list[LayerReport] = []
    for layer in layers:
        keys = captured.keys[layer]
        if layer in key_maps:
            keys = keys @ key_maps[layer]
        train, test = split_held_out(keys, held_out)
        result = train_topk_sae(train, sae_config, train_config, show_progress=True)
        saes[layer] = result.sae
        reports.append(
            LayerReport(
                layer=layer,
                train_fvu=result.train_fvu,
                held_out_fvu=held_out_fvu(result.sae, test),
                dead_fraction=result.dead_fraction,
                n_vectors=int(train.shape[0]),
            )
        )
    bundle = SAEBundle(
        model_id=model_id,
        saes=saes,
        query_means=query_means,
        retrieval_heads=tuple(retrieval_heads),
        key_maps=key_maps,
    )
    return bundle, reports


def question_queries(
    model: Any, tokenizer: Any, questions: Sequence[str], layers: Sequence[int]
) -> dict[int, torch.Tensor]:
    """layer -> (question tokens, query heads, head_dim) pre-RoPE queries of ``questions``."""
    if not questions:
        return {}
    scanner = Scanner(model, (), layers, bos_token_id=tokenizer.bos_token_id)
    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    for question in questions:
        ids = tokenize(tokenizer, question).input_ids
        if len(ids) == 0:
            continue
        projected = scanner.project_queries(ids)
        for layer in layers:
            parts[layer].append(projected[layer])
    return {layer: torch.cat(p) for layer, p in parts.items()}


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
