"""How faithful an SAE bundle is to the model (STA-Attention's tests, plus retrieval's own).

- fraction of variance unexplained of keys, and its curve over k (the "semantic elbow");
- attention-logit fidelity: correlation and top-k overlap between ``q.k`` and ``q.k_hat`` for
  real question queries against real keys;
- the model's perplexity when every instrumented layer's keys are replaced by their SAE
  reconstructions inside the attention.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from s3_retriever.models import attention_shape, decoder_layers
from s3_retriever.sae import SAEBundle, TopKSAE, fraction_of_variance_unexplained


@dataclass(frozen=True)
class LogitFidelity:
    """Agreement of attention logits computed from true and reconstructed keys."""

    correlation: float
    """Pearson correlation of q.k and q.k_hat over all (question token, key) pairs."""
    top_overlap: float
    """Mean share of each question token's top-``top`` keys that stay in its top-``top``."""
    top: int
    """The ``top`` used for the overlap."""


def reconstruct(
    bundle: SAEBundle, layer: int, keys: torch.Tensor, k: int | None = None
) -> torch.Tensor:
    """Keys rebuilt by the layer's SAE, back in the model's key space."""
    sae = bundle.saes[layer]
    mapped = bundle.map_keys(layer, keys.float())
    with torch.no_grad():
        ids, acts = sae.encode(mapped, k)
        rebuilt = sae.decode(ids, acts)
    key_map = bundle.key_maps.get(layer)
    if key_map is not None:
        rebuilt = rebuilt @ torch.linalg.inv(key_map.double()).float()
    return rebuilt


def elbow(bundle: SAEBundle, layer: int, keys: torch.Tensor, ks: Sequence[int]) -> list[float]:
    """Held-out FVU of the layer's SAE when only the top ``k`` latents are kept, for each k.

    The SAE is trained at one k; smaller k at inference is a lower bound on what an SAE trained
    at that k would reach, so the curve shows where extra latents stop paying.
    """
    return [
        fraction_of_variance_unexplained(keys.float(), reconstruct(bundle, layer, keys, k))
        for k in ks
    ]


def logit_fidelity(
    queries: torch.Tensor, keys: torch.Tensor, rebuilt: torch.Tensor, top: int = 10
) -> LogitFidelity:
    """Compare ``queries @ keys.T`` with ``queries @ rebuilt.T``."""
    true = (queries.float() @ keys.float().T).numpy()
    approx = (queries.float() @ rebuilt.float().T).numpy()
    correlation = float(np.corrcoef(true.ravel(), approx.ravel())[0, 1])
    top = min(top, true.shape[1])
    true_top = np.argpartition(-true, top - 1, axis=1)[:, :top]
    approx_top = np.argpartition(-approx, top - 1, axis=1)[:, :top]
    overlap = np.mean(
        [
            len(set(a) & set(b)) / top
            for a, b in zip(true_top.tolist(), approx_top.tolist(), strict=True)
        ]
    )
    return LogitFidelity(correlation=correlation, top_overlap=float(overlap), top=top)


@contextmanager
def reconstructed_keys(model: Any, bundle: SAEBundle) -> Iterator[None]:
    """Inside this block, every bundle layer's ``k_proj`` output is its SAE reconstruction."""
    _, _, n_kv, head_dim = attention_shape(model)
    layers = decoder_layers(model)
    handles = []

    def hook_for(layer: int) -> Any:
        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            heads = output.reshape(*output.shape[:-1], n_kv, head_dim)
            rebuilt = reconstruct(bundle, layer, heads)
            return rebuilt.reshape(output.shape).to(output.dtype)

        return hook

    try:
        for layer in bundle.layers:
            handles.append(layers[layer].self_attn.k_proj.register_forward_hook(hook_for(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def perplexity(model: Any, token_ids: np.ndarray, chunk_size: int = 1024) -> float:
    """Perplexity of ``model`` on ``token_ids``, read in independent chunks."""
    device = next(model.parameters()).device
    total_loss, total_tokens = 0.0, 0
    with torch.inference_mode():
        for start in range(0, len(token_ids) - 1, chunk_size):
            piece = torch.as_tensor(token_ids[start : start + chunk_size], device=device)[None]
            if piece.shape[1] < 2:
                continue
            out = model(input_ids=piece, labels=piece, use_cache=False)
            total_loss += float(out.loss) * (piece.shape[1] - 1)
            total_tokens += piece.shape[1] - 1
    return float(np.exp(total_loss / max(total_tokens, 1)))


def sae_layer_fidelity(sae: TopKSAE, keys: torch.Tensor) -> float:
    """Held-out FVU of one SAE on (n, d) keys in its own input space."""
    with torch.no_grad():
        return fraction_of_variance_unexplained(keys.float(), sae(keys.float()))
