"""Training the SAE bundles of a model: the recipe behind ``s3-retriever train-sae``.

Keys (and optionally values) are captured by the scan (:mod:`.vectors`), one Top-K SAE is trained
per layer (:mod:`.training`), optionally refitted for pursuit coding (:mod:`.pursuit`), and
each is measured on a held-out split.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, NamedTuple

import torch

from s3_retriever.sae.bundle import KEY_CODINGS, SAEConfig, TopKSAE
from s3_retriever.sae.pursuit import refine_for_pursuit
from s3_retriever.sae.training import (
    TrainConfig,
    attention_metric,
    default_device,
    held_out_fvu,
    train_topk_sae,
)
from s3_retriever.sae.vectors import (
    CapturedVectors,
    collect_vectors,
    question_queries,
    retrieval_kv_heads,
    select_kv_heads,
    split_held_out,
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
