"""Train the SAE bundle shipped for the default model (SmolLM2-135M-Instruct).

Training text: the paragraphs of HotpotQA dev questions 380-499 (from ../shared/data, CC BY-SA
4.0). Query centres: the mean pre-RoPE query of those same 120 questions. Questions 0-299 are
left for evaluation and 300-379 for choosing heads and settings, so nothing here is tested on.

    python scripts/train_default_saes.py --data ../shared/data \
        --out s3_retriever/saes/SmolLM2-135M-Instruct
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from s3_retriever.models import attention_shape, load_model
from s3_retriever.sae import SAEConfig
from s3_retriever.sae_training import TrainConfig, train_bundle

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
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--steps", type=int, default=2500)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--max-tokens", type=int, default=200_000)
    parser.add_argument(
        "--metric", choices=("reconstruction", "attention"), default="reconstruction"
    )
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
    started = time.time()
    bundle, reports = train_bundle(
        loaded.model,
        loaded.tokenizer,
        loaded.model_id,
        texts,
        layers,
        SAEConfig(d_in=head_dim, n_latents=args.latents, k=args.k),
        TrainConfig(steps=args.steps, batch_size=args.batch_size),
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
            f"--{k.replace('_', '-')} {v}"
            for k, v in vars(args).items()
            if k not in {"data", "out"}
        ),
        "train_config": TrainConfig(steps=args.steps, batch_size=args.batch_size).__dict__,
        "reports": [r.__dict__ for r in reports],
        "seconds": round(time.time() - started, 1),
    }
    checksum = bundle.save(args.out)
    for r in reports:
        print(
            f"layer {r.layer}: held-out FVU {r.held_out_fvu:.4f} (train {r.train_fvu:.4f}), "
            f"dead {r.dead_fraction:.1%}, {r.n_vectors} vectors"
        )
    print(f"wrote {args.out} (sha256 {checksum[:16]})")


if __name__ == "__main__":
    main()
