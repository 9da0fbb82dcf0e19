"""SAE training on a GPU against the same machine's CPU: keys collected and steps per second.

A random-weight real architecture (bf16) reads random text; :func:`collect_vectors` keeps every
pre-RoPE key and query of three layers on the GPU, and :func:`train_topk_sae` trains the first
layer's SAE there. The same two functions then run on the CPU of the same machine, on fewer tokens
and steps (a CPU is that much slower), and the ratios are reported. Both devices train from the
same seed on the same vectors, so their losses after the same number of steps should agree.

    python -m benchmarks.gpu_sae_train --model llama-3.1-8b
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.common import RESULTS_DIR, markdown_table, write_result
from benchmarks.gpu_models import build_model, gib, scan_layers, sync
from s3_retriever.model.loading import attention_shape
from s3_retriever.model.scan import ScanConfig
from s3_retriever.sae.bundle import SAEConfig, TopKSAE
from s3_retriever.sae.pursuit import refine_for_pursuit
from s3_retriever.sae.training import TrainConfig, train_topk_sae
from s3_retriever.sae.vectors import collect_vectors
from s3_retriever.testing import TRAINING_TEXT, tiny_tokenizer


def random_texts(n_words: int, seed: int = 0) -> list[str]:
    """Documents of words drawn from the tiny tokenizer's training text (random order)."""
    words = " ".join(TRAINING_TEXT).split()
    picks = np.random.default_rng(seed).integers(0, len(words), size=n_words)
    text = " ".join(words[i] for i in picks)
    size = len(text) // 8 + 1
    return [text[i : i + size] for i in range(0, len(text), size)]


def timed_collect(
    model: Any, tokenizer: Any, texts: list[str], layers: Sequence[int], tokens: int, chunk: int
) -> dict[str, Any]:
    device = next(model.parameters()).device
    sync(device)
    start = time.perf_counter()
    captured = collect_vectors(
        model, tokenizer, texts, layers, tokens, ScanConfig(chunk_size=chunk, show_progress=False)
    )
    sync(device)
    seconds = time.perf_counter() - start
    n_keys = sum(int(k.shape[0]) for k in captured.keys.values())
    _, _, n_kv, _ = attention_shape(model)
    n_tokens = n_keys // (n_kv * len(layers))
    return {
        "captured": captured,
        "seconds": seconds,
        "tokens": n_tokens,
        "keys": n_keys,
        "keys_per_s": n_keys / seconds,
        "tokens_per_s": n_tokens / seconds,
    }


def timed_train(
    vectors: torch.Tensor, sae_config: SAEConfig, steps: int, batch: int, device: str
) -> dict[str, Any]:
    train_topk_sae(vectors, sae_config, TrainConfig(steps=3, batch_size=batch), device=device)
    sync(torch.device(device))
    start = time.perf_counter()
    result = train_topk_sae(
        vectors, sae_config, TrainConfig(steps=steps, batch_size=batch), device=device
    )
    sync(torch.device(device))
    seconds = time.perf_counter() - start
    return {
        "steps": steps,
        "seconds": seconds,
        "steps_per_s": steps / seconds,
        "train_fvu": result.train_fvu,
    }


def timed_pursuit(vectors: torch.Tensor, sae_config: SAEConfig, rounds: int, device: str) -> dict:
    """Rounds of fitting atoms to pursuit codes (``train-sae --key-coding pursuit``)."""
    sae = TopKSAE(sae_config).requires_grad_(False)
    generator = torch.Generator().manual_seed(0)
    atoms = torch.randn(sae_config.n_latents, sae_config.d_in, generator=generator)
    sae.W_dec.copy_(torch.nn.functional.normalize(atoms, dim=1))
    vectors = vectors.to(device)
    refine_for_pursuit(sae, vectors[:4096], 1, device=device)  # warm-up
    sync(torch.device(device))
    start = time.perf_counter()
    history = refine_for_pursuit(sae, vectors, rounds, device=device)
    sync(torch.device(device))
    seconds = time.perf_counter() - start
    return {
        "rounds": rounds,
        "vectors": len(vectors),
        "seconds": seconds,
        "rounds_per_s": rounds / seconds,
        "keys_coded_per_s": rounds * len(vectors) / seconds,
        "fvu": history,
    }


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="llama-3.1-8b")
    parser.add_argument("--tokens", type=int, default=262144, help="tokens collected on the GPU")
    parser.add_argument("--cpu-tokens", type=int, default=2048, help="tokens collected on the CPU")
    parser.add_argument("--chunk", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=4096, help="vectors per training step")
    parser.add_argument("--steps", type=int, default=500, help="training steps on the GPU")
    parser.add_argument("--cpu-steps", type=int, default=20, help="training steps on the CPU")
    parser.add_argument("--pursuit-k", type=int, default=4, help="k of the pursuit-coded SAE")
    parser.add_argument("--pursuit-keys", type=int, default=262144, help="keys per pursuit round")
    parser.add_argument("--pursuit-rounds", type=int, default=3, help="pursuit rounds on the GPU")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--name", default="gpu_sae_train")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR)
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    tokenizer = tiny_tokenizer()
    model = build_model(args.model, device)
    n_layers, _, _, head_dim = attention_shape(model)
    layers = scan_layers(model, n_layers // 2)
    texts = random_texts(args.tokens)  # about one token per word with the tiny tokenizer
    gpu_collect = timed_collect(model, tokenizer, texts, layers, args.tokens, args.chunk)
    print(f"{device} collect: {gpu_collect['keys_per_s']:,.0f} keys/s", flush=True)
    keys = gpu_collect.pop("captured").keys[layers[0]]
    sae_config = SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.k)
    gpu_train = timed_train(keys, sae_config, args.steps, args.batch, args.device)
    gpu_same_steps = timed_train(keys, sae_config, args.cpu_steps, args.batch, args.device)
    print(f"{device} train: {gpu_train['steps_per_s']:.1f} steps/s", flush=True)
    pursuit_keys = keys[: args.pursuit_keys].float()
    pursuit_config = SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.pursuit_k)
    gpu_pursuit = timed_pursuit(pursuit_keys, pursuit_config, args.pursuit_rounds, args.device)
    print(f"{device} pursuit: {gpu_pursuit['keys_coded_per_s']:,.0f} keys/s", flush=True)
    peak = torch.cuda.max_memory_allocated(device) if device.type == "cuda" else 0

    model = model.to("cpu")
    cpu_texts = random_texts(args.cpu_tokens, seed=1)
    cpu_collect = timed_collect(
        model, tokenizer, cpu_texts, layers, args.cpu_tokens, min(args.chunk, args.cpu_tokens)
    )
    cpu_collect.pop("captured")
    print(f"cpu collect: {cpu_collect['keys_per_s']:,.0f} keys/s", flush=True)
    cpu_train = timed_train(keys.cpu(), sae_config, args.cpu_steps, args.batch, "cpu")
    print(f"cpu train: {cpu_train['steps_per_s']:.2f} steps/s", flush=True)
    cpu_pursuit = timed_pursuit(pursuit_keys.cpu(), pursuit_config, 1, "cpu")
    print(f"cpu pursuit: {cpu_pursuit['keys_coded_per_s']:,.0f} keys/s", flush=True)

    rows = [
        [
            "keys collected / s",
            f"{gpu_collect['keys_per_s']:,.0f}",
            f"{cpu_collect['keys_per_s']:,.0f}",
            gpu_collect["keys_per_s"] / cpu_collect["keys_per_s"],
        ],
        [
            "SAE training steps / s",
            f"{gpu_train['steps_per_s']:.1f}",
            f"{cpu_train['steps_per_s']:.2f}",
            gpu_train["steps_per_s"] / cpu_train["steps_per_s"],
        ],
        [
            f"pursuit atom fitting, keys coded / s (k = {args.pursuit_k})",
            f"{gpu_pursuit['keys_coded_per_s']:,.0f}",
            f"{cpu_pursuit['keys_coded_per_s']:,.0f}",
            gpu_pursuit["keys_coded_per_s"] / cpu_pursuit["keys_coded_per_s"],
        ],
        [
            f"train FVU after {args.cpu_steps} steps",
            f"{gpu_same_steps['train_fvu']:.4f}",
            f"{cpu_train['train_fvu']:.4f}",
            "-",
        ],
    ]
    table = markdown_table([f"{args.model}, random weights, bf16", "GPU", "CPU", "GPU / CPU"], rows)
    write_result(
        args.name,
        {
            "settings": {k: v for k, v in vars(args).items() if k != "out"},
            "layers": list(layers),
            "cpu_threads": torch.get_num_threads(),
            "gpu_peak_gib": gib(peak),
            "gpu_collect": gpu_collect,
            "cpu_collect": cpu_collect,
            "gpu_train": gpu_train,
            "gpu_train_same_steps": gpu_same_steps,
            "cpu_train": cpu_train,
            "gpu_pursuit": gpu_pursuit,
            "cpu_pursuit": cpu_pursuit,
        },
        table,
        out_dir=args.out,
    )


if __name__ == "__main__":
    main()
