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
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from s3_retriever.models import attention_shape, load_model
from s3_retriever.sae import SAEBundle, SAEConfig
from s3_retriever.sae_training import (
    VALUE_BUNDLE_KIND,
    TrainConfig,
    collect_vectors,
    train_bundles,
    train_layer_saes,
)

DEFAULT_HEADS = "5:6,8:0,8:1"


def hotpot_rows(data_dir: Path, first: int, last: int) -> list[dict]:
    path = data_dir / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl"
    with open(path, encoding="utf-8") as handle:
        rows = [json.loads(line) for line in handle]
    return rows[first:last]


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
    parser.add_argument(
        "--metric", choices=("reconstruction", "attention"), default="reconstruction"
    )
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
    if args.values_only:
        captured = collect_vectors(
            loaded.model, loaded.tokenizer, texts, layers, args.max_tokens, want_values=True
        )
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
        )
    bundle.info = {
        "training_text": "HotpotQA dev (IRCoT subsample) questions 380-499: paragraphs; "
        "query centres from the same questions",
        "command": "python scripts/train_default_saes.py "
        + " ".join(
            f"--{k.replace('_', '-')}" + ("" if v is True else f" {v}")
            for k, v in vars(args).items()
            if k not in {"data", "out", "checkpoint", "resume"} and v is not False
        ),
        "train_config": train_config.__dict__,
        "reports": [r.__dict__ for r in reports],
        "seconds": round(time.time() - started, 1),
    }
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
