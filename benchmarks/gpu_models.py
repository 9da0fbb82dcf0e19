"""Random-weight models of real 7-8B architectures, random SAEs, FLOP counts and the matmul ceiling.

No weights reach the GPU machine, and speed and memory do not depend on the values of the weights,
so the GPU benchmarks build the real architectures from their configs with random init, directly
on the device (initialising 8B parameters on the CPU takes minutes).
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

import torch

from s3_retriever.model.loading import attention_shape
from s3_retriever.sae.bundle import SAEBundle, SAEConfig, TopKSAE

ARCHITECTURES: dict[str, dict[str, Any]] = {
    "llama-3.1-8b": {
        "model_type": "llama",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "rms_norm_eps": 1e-5,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        },
        "bos_token_id": 128000,
    },
    "qwen2.5-7b": {
        "model_type": "qwen2",
        "hidden_size": 3584,
        "intermediate_size": 18944,
        "num_hidden_layers": 28,
        "num_attention_heads": 28,
        "num_key_value_heads": 4,
        "vocab_size": 152064,
        "max_position_embeddings": 131072,
        "rope_theta": 1000000.0,
        "rms_norm_eps": 1e-6,
        "bos_token_id": 151643,
    },
    # A few-million-parameter Llama with the same code paths, for checking the scripts on a CPU.
    "tiny-llama": {
        "model_type": "llama",
        "hidden_size": 256,
        "intermediate_size": 512,
        "num_hidden_layers": 8,
        "num_attention_heads": 8,
        "num_key_value_heads": 2,
        "vocab_size": 1024,
        "max_position_embeddings": 131072,
        "rope_theta": 500000.0,
        "bos_token_id": 1,
    },
}


def build_model(name: str, device: torch.device, dtype: torch.dtype = torch.bfloat16) -> Any:
    """A random-weight causal LM of the named architecture, built on ``device``, SDPA attention."""
    from transformers import AutoConfig, AutoModelForCausalLM

    settings = dict(ARCHITECTURES[name])
    config = AutoConfig.for_model(settings.pop("model_type"), **settings)
    config._attn_implementation = "sdpa"
    torch.manual_seed(0)
    with device:
        model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    return model.eval().requires_grad_(False)


def scan_layers(model: Any, depth: int) -> tuple[int, ...]:
    """Three instrumented layers ending at ``depth - 1``: the half, three-quarter and last layer."""
    return tuple(sorted({depth // 2, (3 * depth) // 4, depth - 1}))


def retrieval_heads(model: Any, layers: Sequence[int], per_layer: int = 4) -> list[tuple[int, int]]:
    """``per_layer`` query heads per layer, each in a different KV group (one field each)."""
    _, n_heads, n_kv, _ = attention_shape(model)
    group = n_heads // n_kv
    step = max(1, n_kv // per_layer)
    return [(layer, kv * group) for layer in layers for kv in range(0, n_kv, step)[:per_layer]]


def random_bundle(
    model: Any, layers: Sequence[int], heads: Sequence[tuple[int, int]], n_latents: int, k: int
) -> SAEBundle:
    """Random Top-K SAEs of the model's head dimension, shaped like the shipped ones."""
    _, n_heads, _, head_dim = attention_shape(model)
    generator = torch.Generator().manual_seed(0)
    saes = {}
    for layer in layers:
        sae = TopKSAE(SAEConfig(d_in=head_dim, n_latents=n_latents, k=k))
        with torch.no_grad():
            atoms = torch.randn(n_latents, head_dim, generator=generator)
            sae.W_dec.copy_(atoms / atoms.norm(dim=-1, keepdim=True))
            sae.W_enc.copy_(sae.W_dec)
        saes[layer] = sae.eval().requires_grad_(False)
    means = {layer: torch.zeros(n_heads, head_dim) for layer in layers}
    return SAEBundle("random", saes, means, retrieval_heads=tuple(heads))


def forward_flops(model: Any, tokens: int, attended: float, depth: int | None = None) -> float:
    """Matmul FLOPs of a forward pass over ``tokens`` tokens through the first ``depth`` layers.

    ``attended`` is the mean number of keys each query sees (half the chunk for a causal chunk).
    The LM head is left out: the scan never runs it and the prefill computes one position of it.
    """
    cfg = model.config
    n_layers, n_heads, n_kv, head_dim = attention_shape(model)
    depth = n_layers if depth is None else depth
    hidden = cfg.hidden_size
    projections = hidden * head_dim * (2 * n_heads + 2 * n_kv)
    mlp = 3 * hidden * cfg.intermediate_size
    per_token = 2 * (projections + mlp) + 4 * attended * n_heads * head_dim
    return float(per_token * tokens * depth)


def matmul_ceiling(device: torch.device, size: int = 8192, repeats: int = 10) -> float:
    """Measured dense bf16 matmul rate in FLOP/s on random data (mean of ``repeats`` products)."""
    a = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    b = torch.randn(size, size, device=device, dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    sync(device)
    start = time.perf_counter()
    for _ in range(repeats):
        a @ b
    sync(device)
    return 2 * size**3 * repeats / (time.perf_counter() - start)


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def gib(n_bytes: float) -> float:
    return n_bytes / 2**30
