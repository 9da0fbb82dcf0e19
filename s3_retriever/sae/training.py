"""Training Top-K SAEs on captured pre-RoPE keys (and values), with the established recipe.

- the decoder bias starts at the data mean and is subtracted before encoding;
- the encoder starts as the decoder's transpose;
- decoder atoms stay at unit norm, and the gradient along each atom is removed;
- an auxiliary Top-K loss on dead latents (Gao et al., 2024) brings them back.

Runs can be checkpointed and resumed exactly (:mod:`s3_retriever.sae.checkpoint`).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

from s3_retriever.model.loading import decoder_layers
from s3_retriever.model.scan import ScanConfig, Scanner, TokenizedText, tokenize
from s3_retriever.sae.bundle import (
    KEY_CODINGS,
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
from s3_retriever.sae.pursuit import code_vectors, refine_for_pursuit


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


@dataclass
class CapturedVectors:
    """Pre-RoPE keys and queries (and values when asked) gathered from a corpus, per layer."""

    keys: dict[int, torch.Tensor]
    """layer -> (tokens * kv_heads, head_dim) keys."""
    queries: dict[int, torch.Tensor]
    """layer -> (tokens, query_heads, head_dim) queries."""
    values: dict[int, torch.Tensor] = field(default_factory=dict)
    """layer -> (tokens * kv_heads, head_dim) values; empty unless values were asked for."""


class _ValueTap:
    """Computes ``v_proj`` of each instrumented layer alongside the scanner's ``k_proj`` capture.

    ``v_proj`` reads the same normed hidden state as ``k_proj`` but runs after it, past the point
    where the scanner stops the forward pass; a pre-hook on ``k_proj`` applies ``v_proj`` to that
    input first. The scanner must run one chunk per forward pass, so the tap's single row is the
    chunk just yielded.
    """

    def __init__(self, model: Any, layers: Sequence[int]) -> None:
        self._attention = {layer: decoder_layers(model)[layer].self_attn for layer in layers}
        self._latest: dict[int, torch.Tensor] = {}
        self._handles: list[Any] = []

    def __enter__(self) -> _ValueTap:
        for layer, attn in self._attention.items():
            self._handles.append(attn.k_proj.register_forward_pre_hook(self._hook(layer)))
        return self

    def __exit__(self, *_exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _hook(self, layer: int) -> Any:
        v_proj = self._attention[layer].v_proj

        def hook(_module: Any, inputs: tuple[torch.Tensor, ...]) -> None:
            self._latest[layer] = v_proj(inputs[0]).detach()

        return hook

    def take(self, layer: int, n_tokens: int, head_dim: int) -> torch.Tensor:
        """The last chunk's ``n_tokens`` values at ``layer``, as (n_tokens * kv_heads, head_dim)."""
        batch = self._latest.pop(layer)
        if batch.shape[0] != 1 or not 0 <= batch.shape[1] - n_tokens <= 1:
            raise RuntimeError(
                f"value capture expected one chunk of {n_tokens} tokens (plus BOS), got a batch "
                f"of shape {tuple(batch.shape[:2])}; scan with batch_size=1"
            )
        return batch[0, batch.shape[1] - n_tokens :].reshape(-1, head_dim)


def collect_vectors(
    model: Any,
    tokenizer: Any,
    texts: Sequence[str],
    layers: Sequence[int],
    max_tokens: int,
    scan_config: ScanConfig | None = None,
    device: str | torch.device | None = None,
    want_values: bool = False,
) -> CapturedVectors:
    """Scan ``texts`` (up to ``max_tokens`` tokens) and keep every key and query at ``layers``.

    The scan runs where ``model`` is; the vectors are kept on ``device`` (default: the model's
    device), so a GPU scan can feed GPU training without a round trip through the CPU.
    ``want_values`` also keeps the values (``v_proj`` outputs); chunks then run one per forward
    pass. Memory is bounded by ``max_tokens``: vectors are kept in bf16 as they stream in.
    """
    keep_on = torch.device(device) if device is not None else next(model.parameters()).device
    docs: list[TokenizedText] = []
    total = 0
    for text in texts:
        doc = tokenize(tokenizer, text)
        if len(doc) == 0:
            continue
        # The last text is cut at the cap: one long file must not lift the memory bound.
        keep = min(len(doc), max_tokens - total)
        if keep < len(doc):
            doc = TokenizedText(doc.input_ids[:keep], doc.starts[:keep], doc.ends[:keep])
        docs.append(doc)
        total += len(doc)
        if total >= max_tokens:
            break
    if want_values:
        scan_config = replace(scan_config or ScanConfig(), batch_size=1)
    scanner = Scanner(model, layers, layers, scan_config, bos_token_id=tokenizer.bos_token_id)
    keys: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    queries: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
    values: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers} if want_values else {}
    tap = _ValueTap(model, layers if want_values else ())
    with tap:
        for capture in scanner.scan(docs, want_queries=True, desc="collecting"):
            for layer in layers:
                k = capture.keys[layer]
                keys[layer].append(k.reshape(-1, k.shape[-1]).to(keep_on, torch.bfloat16))
                queries[layer].append(capture.queries[layer].to(keep_on, torch.bfloat16))
                if want_values:
                    v = tap.take(layer, k.shape[0], k.shape[-1])
                    values[layer].append(v.to(keep_on, torch.bfloat16))
    return CapturedVectors(
        keys={layer: torch.cat(parts).float() for layer, parts in keys.items()},
        queries={layer: torch.cat(parts).float() for layer, parts in queries.items()},
        values={layer: torch.cat(parts).float() for layer, parts in values.items()},
    )


def split_held_out(
    vectors: torch.Tensor, held_out: float, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, held-out) split of a (n, d) tensor."""
    order = np.random.default_rng(seed).permutation(vectors.shape[0])
    cut = int(len(order) * (1 - held_out))
    return vectors[order[:cut]], vectors[order[cut:]]


def held_out_fvu(sae: TopKSAE, vectors: torch.Tensor, coding: str = "encoder") -> float:
    """FVU of ``sae`` on vectors it did not train on, coded by its encoder or by pursuit."""
    with torch.no_grad():
        return fraction_of_variance_unexplained(
            vectors, sae.decode(*code_vectors(sae, vectors, coding))
        )


@dataclass(frozen=True)
class LayerReport:
    """Fidelity of one layer's SAE."""

    layer: int
    train_fvu: float
    held_out_fvu: float
    dead_fraction: float
    n_vectors: int
    vectors: str = "keys"
    """What the SAE encodes: ``keys`` or ``values``."""
    coding: str = "encoder"
    """How the FVUs were coded: the SAE's ``encoder`` or ``pursuit`` (after fitting the atoms to
    pursuit codes, see :func:`s3_retriever.sae.pursuit.refine_for_pursuit`)."""


class TrainedBundles(NamedTuple):
    """What :func:`train_bundles` produced."""

    keys: Any
    """The key :class:`SAEBundle`, the one retrieval uses."""
    values: Any
    """A value :class:`SAEBundle` (same layers, no query centres), or None if not asked for."""
    reports: list[LayerReport]
    """One report per (layer, keys or values) SAE."""


VALUE_BUNDLE_KIND = "values"
"""``info["vectors"]`` of a value bundle, so a value bundle is never mistaken for a key one."""


METRICS = ("reconstruction", "attention", "mixed")
"""What a key SAE's squared error is measured in (see :func:`train_bundles`)."""
KEY_HEADS = ("all", "retrieval")
"""Which KV heads' keys a layer's key SAE trains on (see :func:`train_bundles`)."""
DEFAULT_PURSUIT_ROUNDS = 24
"""Dictionary updates fitting the atoms to pursuit codes after SAE training (``key_coding=
"pursuit"``). On SmolLM2's retrieval KV heads (k = 4, 2,048 latents, 15,945 held-out keys a
layer) held-out FVU was 0.177 / 0.152 (layers 5 / 8) with the SAE's encoder, 0.125 / 0.099 with
pursuit over the same atoms, 0.103 / 0.076 after 24 rounds; a round takes ~3 s per 140k keys
on a 2-core CPU."""


def train_bundles(
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
    value_sae_config: SAEConfig | None = None,
    checkpoint_dir: str | os.PathLike[str] | None = None,
    resume: bool = False,
    key_heads: str = "all",
    logit_weight: float = 0.5,
    captured: CapturedVectors | None = None,
    key_coding: str = "encoder",
    pursuit_rounds: int = DEFAULT_PURSUIT_ROUNDS,
) -> TrainedBundles:
    """Collect keys (and values) from ``texts``, train one SAE per layer each, package bundles.

    Query means (the centres subtracted from question vectors) are the mean pre-RoPE query of
    ``question_texts`` when given, else of the corpus tokens.

    ``metric="attention"`` trains each key SAE on keys mapped by ``A = C^(1/2)``, where ``C`` is
    the second moment of the retrieval heads' centred question queries: the SAE's squared error
    then equals the expected squared error of the attention logits ``q.k`` (needs
    ``question_texts`` and ``retrieval_heads``). ``metric="mixed"`` measures the error in
    ``(1 - w) ||e||^2 + w E[(q.e)^2]`` (both terms scaled to the same mean), ``w`` being
    ``logit_weight``: reconstruction plus a penalty on the logit error of real question queries.

    ``key_heads="retrieval"`` trains each layer's key SAE only on the keys of the KV heads its
    retrieval heads read (the only keys an index of those heads encodes), so the whole dictionary
    serves them; ``"all"`` trains on every KV head of the layer.

    ``value_sae_config`` also trains value SAEs (STA's dual budget: its ``k`` is the value k).
    ``checkpoint_dir`` keeps one checkpoint per SAE there; ``resume`` continues from them.
    ``captured`` reuses vectors collected earlier from the same ``texts`` (see
    :mod:`s3_retriever.sae.vector_cache`) instead of scanning again.

    ``key_coding="pursuit"`` makes the key bundle code keys by matching pursuit at index time
    (:mod:`s3_retriever.sae.pursuit`) and, after each key SAE is trained, fits its atoms to pursuit
    codes for ``pursuit_rounds`` rounds; the reports then give pursuit FVUs.
    """
    _check_training_choices(metric, key_heads, logit_weight, question_texts, retrieval_heads)
    if key_coding not in KEY_CODINGS:
        raise ValueError(f"key_coding must be one of {', '.join(KEY_CODINGS)}, got {key_coding!r}")
    if pursuit_rounds < 0:
        raise ValueError(f"pursuit_rounds must be 0 or more, got {pursuit_rounds}")
    from s3_retriever.model.loading import attention_shape
    from s3_retriever.sae.bundle import SAEBundle

    want_values = value_sae_config is not None
    if captured is None:
        captured = collect_vectors(
            loaded_model, tokenizer, texts, layers, max_tokens, device="cpu",
            want_values=want_values,
        )  # fmt: skip
    elif want_values and not captured.values:
        raise ValueError("value SAEs asked for, but the reused vectors hold no values")
    asked = question_queries(loaded_model, tokenizer, question_texts, layers)
    if asked:
        query_means = {layer: q.mean(dim=0) for layer, q in asked.items()}
    elif captured.queries:
        query_means = {layer: q.mean(dim=0) for layer, q in captured.queries.items()}
    else:
        raise ValueError("reused vectors hold no queries: pass question_texts for query centres")
    key_maps: dict[int, torch.Tensor] = {}
    if metric != "reconstruction":
        ridge = 1e-3 if metric == "attention" else (1 - logit_weight) / logit_weight
        for layer in layers:
            heads = [h for lay, h in retrieval_heads if lay == layer]
            if heads:
                centred = asked[layer][:, heads] - query_means[layer][heads]
                key_maps[layer] = attention_metric(centred.reshape(-1, centred.shape[-1]), ridge)
    _, n_heads, n_kv, _ = attention_shape(loaded_model)
    trained_on = {layer: tuple(range(n_kv)) for layer in layers}
    if key_heads == "retrieval":
        trained_on.update(retrieval_kv_heads(retrieval_heads, n_heads // n_kv))
    mapped_keys = {}
    for layer in layers:
        layer_keys = select_kv_heads(captured.keys[layer], n_kv, trained_on[layer])
        mapped_keys[layer] = layer_keys @ key_maps[layer] if layer in key_maps else layer_keys
    saes, reports = train_layer_saes(
        mapped_keys, "keys", sae_config, train_config, held_out, checkpoint_dir, resume,
        pursuit_rounds=pursuit_rounds if key_coding == "pursuit" else None,
    )  # fmt: skip
    keys = SAEBundle(
        model_id=model_id,
        saes=saes,
        query_means=query_means,
        retrieval_heads=tuple(retrieval_heads),
        key_maps=key_maps,
        key_coding=key_coding,  # type: ignore[arg-type]
        info={"key_kv_heads": {str(layer): list(h) for layer, h in trained_on.items()}},
    )
    values = None
    if value_sae_config is not None:
        value_saes, value_reports = train_layer_saes(
            captured.values, "values", value_sae_config, train_config, held_out,
            checkpoint_dir, resume,
        )  # fmt: skip
        values = SAEBundle(
            model_id=model_id, saes=value_saes, query_means={}, info={"vectors": VALUE_BUNDLE_KIND}
        )
        reports += value_reports
    return TrainedBundles(keys=keys, values=values, reports=reports)


def _check_training_choices(
    metric: str,
    key_heads: str,
    logit_weight: float,
    question_texts: Sequence[str],
    retrieval_heads: Sequence[tuple[int, int]],
) -> None:
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {', '.join(METRICS)}, got {metric!r}")
    if metric != "reconstruction" and not (question_texts and retrieval_heads):
        raise ValueError(f"metric={metric!r} needs question_texts and retrieval_heads")
    if metric == "mixed" and not 0 < logit_weight <= 1:
        raise ValueError(f"logit_weight must be in (0, 1], got {logit_weight}")
    if key_heads not in KEY_HEADS:
        raise ValueError(f"key_heads must be one of {', '.join(KEY_HEADS)}, got {key_heads!r}")
    if key_heads == "retrieval" and not retrieval_heads:
        raise ValueError(
            "key_heads='retrieval' needs retrieval_heads (--heads on the command line)"
        )


def retrieval_kv_heads(
    retrieval_heads: Sequence[tuple[int, int]], kv_group: int
) -> dict[int, tuple[int, ...]]:
    """layer -> the KV heads its retrieval (query) heads read under GQA (``head // kv_group``)."""
    found: dict[int, set[int]] = {}
    for layer, head in retrieval_heads:
        found.setdefault(layer, set()).add(head // kv_group)
    return {layer: tuple(sorted(heads)) for layer, heads in found.items()}


def select_kv_heads(vectors: torch.Tensor, n_kv: int, heads: Sequence[int]) -> torch.Tensor:
    """The rows of KV heads ``heads`` in a (tokens * n_kv, head_dim) capture (token-major)."""
    if len(heads) == n_kv:
        return vectors
    if vectors.shape[0] % n_kv:
        raise ValueError(f"{vectors.shape[0]} rows are not a whole number of {n_kv} KV heads")
    by_token = vectors.reshape(-1, n_kv, vectors.shape[-1])
    return by_token[:, list(heads)].reshape(-1, vectors.shape[-1])


def train_layer_saes(
    vectors: dict[int, torch.Tensor],
    kind: str,
    sae_config: SAEConfig,
    train_config: TrainConfig | None,
    held_out: float,
    checkpoint_dir: str | os.PathLike[str] | None,
    resume: bool,
    pursuit_rounds: int | None = None,
) -> tuple[dict[int, TopKSAE], list[LayerReport]]:
    """One SAE per layer (``kind``: ``keys`` or ``values``), measured on a held-out split.

    With ``checkpoint_dir`` each SAE keeps its checkpoint at ``<kind>_layer_XX.safetensors``.
    ``pursuit_rounds`` (not None): after training, fit the atoms to pursuit codes of the training
    split for that many rounds, and measure FVUs with pursuit codes. The checkpoint holds the
    SAE before this step, which is deterministic, so a resumed run repeats it exactly.
    """
    saes: dict[int, TopKSAE] = {}
    reports: list[LayerReport] = []
    for layer, layer_vectors in vectors.items():
        train, test = split_held_out(layer_vectors, held_out)
        checkpoint = None
        if checkpoint_dir is not None:
            checkpoint = Path(checkpoint_dir) / f"{kind}_layer_{layer:02d}.safetensors"
        result = train_topk_sae(
            train, sae_config, train_config, True, checkpoint=checkpoint, resume=resume
        )
        saes[layer] = result.sae
        train_fvu, coding = result.train_fvu, "encoder"
        if pursuit_rounds is not None:
            coding = "pursuit"
            refine_for_pursuit(
                result.sae, train, pursuit_rounds, show_progress=True, device=default_device()
            )
            train_fvu = held_out_fvu(result.sae, train, coding)
        reports.append(
            LayerReport(
                layer=layer,
                train_fvu=train_fvu,
                held_out_fvu=held_out_fvu(result.sae, test, coding),
                dead_fraction=result.dead_fraction,
                n_vectors=int(train.shape[0]),
                vectors=kind,
                coding=coding,
            )
        )
    return saes, reports


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
