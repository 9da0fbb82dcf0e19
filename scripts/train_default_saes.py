"""Train the SAE bundle shipped for the default model (SmolLM2-135M-Instruct).

Training text: the paragraphs of HotpotQA dev questions 380-499 (from ../shared/data, CC BY-SA
4.0). Query centres: the mean pre-RoPE query of those same 120 questions. Questions 0-299 are
left for evaluation and 300-379 for choosing heads and settings, so nothing here is tested on.

    python scripts/train_default_saes.py --data ../shared/data \
        --out s3_retriever/saes/SmolLM2-135M-Instruct

``--values-only`` trains value SAEs for the same layers instead (STA's dual budget), on the same
text, and writes them as a separate value bundle that retrieval does not need:

    python scripts/train_default_saes.py --data ../shared/data --values-only \
        --out runs/sae_values/SmolLM2-135M-Instruct

A sweep over dictionary sizes, k or objectives scans the training text once with
``--vectors-cache FILE`` (kept keys and values; reused when the text and layers match).
``--key-heads retrieval`` trains each layer's key SAE on the retrieval heads' KV heads only;
``--metric mixed --logit-weight W`` adds the logit error of the training questions' queries.
``--key-coding pursuit`` makes indexes code keys by matching pursuit over the atoms, which are
fitted to pursuit codes after training (``--pursuit-rounds``).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time
from pathlib import Path

from s3_retriever.model.loading import LoadedModel, attention_shape, load_model
from s3_retriever.sae.bundle import KEY_CODINGS, SAEBundle, SAEConfig
from s3_retriever.sae.recipe import (
    DEFAULT_PURSUIT_ROUNDS,
    KEY_HEADS,
    METRICS,
    VALUE_BUNDLE_KIND,
    train_bundles,
    train_layer_saes,
)
from s3_retriever.sae.training import TrainConfig
from s3_retriever.sae.vector_cache import load_vectors, save_vectors
from s3_retriever.sae.vectors import CapturedVectors, collect_vectors

DEFAULT_HEADS = "5:6,8:0,8:1"


def hotpot_rows(data_dir: Path, first: int, last: int) -> list[dict]:
    path = data_dir / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl"
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return rows[first:last]


def cached_vectors(
    loaded: LoadedModel, texts: list[str], layers: list[int], max_tokens: int, cache: Path | None
) -> CapturedVectors:
    """Keys and values of ``texts`` at ``layers``: read from ``cache`` when it holds them, else
    scanned (and written there when a cache path is given)."""
    settings = {
        "model": loaded.model_id,
        "layers": layers,
        "max_tokens": max_tokens,
        "texts_sha256": hashlib.sha256("\x00".join(texts).encode()).hexdigest(),
    }
    if cache is not None and cache.is_file():
        return load_vectors(cache, settings)
    captured = collect_vectors(
        loaded.model, loaded.tokenizer, texts, layers, max_tokens, want_values=True
    )
    if cache is not None:
        save_vectors(cache, captured, settings)
    return captured


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", type=Path)
    parser.add_argument("--out", default="s3_retriever/saes/SmolLM2-135M-Instruct", type=Path)
    parser.add_argument("--heads", default=DEFAULT_HEADS, help="layer:head,... retrieval heads")
    parser.add_argument("--latents", type=int, default=2048)
    parser.add_argument("--k", type=int, default=32, help="active latents per vector")
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=200_000)
    parser.add_argument("--metric", choices=METRICS, default="reconstruction")
    parser.add_argument(
        "--logit-weight", type=float, default=0.5, help="--metric mixed: weight of the logit term"
    )
    parser.add_argument(
        "--key-heads",
        choices=KEY_HEADS,
        default="all",
        help="train each layer's key SAE on all its KV heads or on the retrieval heads' only",
    )
    parser.add_argument(
        "--key-coding",
        choices=KEY_CODINGS,
        default="encoder",
        help="code keys by the SAE's encoder or by matching pursuit over its atoms",
    )
    parser.add_argument(
        "--pursuit-rounds",
        type=int,
        default=DEFAULT_PURSUIT_ROUNDS,
        help="--key-coding pursuit: rounds fitting the atoms to pursuit codes",
    )
    parser.add_argument("--vectors-cache", type=Path, default=None, help="captured vectors file")
    parser.add_argument("--values-only", action="store_true", help="train value SAEs instead")
    parser.add_argument("--checkpoint", type=Path, default=None, help="checkpoint folder")
    parser.add_argument("--resume", action="store_true", help="continue from --checkpoint")
    args = parser.parse_args()

    heads = [tuple(int(v) for v in h.split(":")) for h in args.heads.split(",")]
    layers = sorted({layer for layer, _ in heads})
    rows = hotpot_rows(args.data, 380, 500)
    texts = [
        "\n\n".join(f"{c['title']}\n{c['paragraph_text']}" for c in row["contexts"]) for row in rows
    ]
    questions = [row["question_text"] for row in rows]
    loaded = load_model()
    _, _, _, head_dim = attention_shape(loaded.model)
    sae_config = SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.k)
    train_config = TrainConfig(steps=args.steps, batch_size=args.batch_size)
    started = time.time()
    captured = None
    if args.vectors_cache is not None or args.values_only:
        captured = cached_vectors(loaded, texts, layers, args.max_tokens, args.vectors_cache)
    if args.values_only:
        assert captured is not None
        saes, reports = train_layer_saes(
            captured.values, "values", sae_config, train_config, 0.1, args.checkpoint, args.resume
        )
        bundle = SAEBundle(model_id=loaded.model_id, saes=saes, query_means={})
    else:
        bundle, _, reports = train_bundles(
            loaded.model,
            loaded.tokenizer,
            loaded.model_id,
            texts,
            layers,
            sae_config,
            train_config,
            max_tokens=args.max_tokens,
            retrieval_heads=[(a, b) for a, b in heads],
            question_texts=questions,
            metric=args.metric,
            key_heads=args.key_heads,
            logit_weight=args.logit_weight,
            captured=captured,
            key_coding=args.key_coding,
            pursuit_rounds=args.pursuit_rounds,
        )
    bundle.info.update(
        {
            "training_text": "HotpotQA dev (IRCoT subsample) questions 380-499: paragraphs; "
            "query centres from the same questions",
            "command": "python scripts/train_default_saes.py "
            + " ".join(
                f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
                for k, v in vars(args).items()
                if k not in {"data", "out", "checkpoint", "resume", "vectors_cache"}
                and v is not False
            ),
            "train_config": train_config.__dict__,
            "reports": [r.__dict__ for r in reports],
            "seconds": round(time.time() - started, 1),
        }
    )
    if args.values_only:
        bundle.info["vectors"] = VALUE_BUNDLE_KIND
    checksum = bundle.save(args.out)
    for r in reports:
        print(
            f"layer {r.layer}: held-out FVU {r.held_out_fvu:.4f} (train {r.train_fvu:.4f}), "
            f"dead {r.dead_fraction:.1%}, {r.n_vectors} vectors"
        )
    print(f"wrote {args.out} (sha256 {checksum[:16]})")


if __name__ == "__main__":
    main()
