"""Fidelity report of an SAE bundle on held-out text: FVU, elbow, logit fidelity, perplexity.

Held-out text: HotpotQA paragraphs of questions 300-379 (the SAEs trained on 380-499); question
queries for logit fidelity come from the same 80 questions.

    python scripts/sae_report.py --data ../shared/data --out docs/results/sae_report
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch

from s3_retriever.fidelity import (
    elbow,
    logit_fidelity,
    perplexity,
    reconstruct,
    reconstructed_keys,
)
from s3_retriever.models import attention_shape, load_model
from s3_retriever.sae import SAEBundle, shipped_bundle_dir
from s3_retriever.sae_training import _question_queries, collect_vectors
from s3_retriever.scan import tokenize

KS = (1, 2, 4, 8, 16, 32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data", type=Path)
    parser.add_argument("--sae", default=None, type=Path)
    parser.add_argument("--max-tokens", type=int, default=30_000)
    parser.add_argument("--out", default="docs/results/sae_report", type=Path)
    args = parser.parse_args()
    path = args.data / "hotpotqa_dev_distractor" / "hotpotqa_dev_subsampled.jsonl"
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()][300:380]
    texts = [
        "\n\n".join(f"{c['title']}\n{c['paragraph_text']}" for c in row["contexts"]) for row in rows
    ]
    questions = [row["question_text"] for row in rows]
    loaded = load_model()
    bundle = SAEBundle.load(args.sae or shipped_bundle_dir(loaded.model_id))
    _, n_heads, n_kv, head_dim = attention_shape(loaded.model)
    group = n_heads // n_kv
    layers = list(bundle.layers)
    captured = collect_vectors(loaded.model, loaded.tokenizer, texts, layers, args.max_tokens)
    asked = _question_queries(loaded.model, loaded.tokenizer, questions, layers)
    report: dict[str, object] = {"bundle": str(args.sae or "shipped"), "layers": {}}
    generator = torch.Generator().manual_seed(0)
    for layer in layers:
        keys = captured.keys[layer]
        trained_k = bundle.saes[layer].config.k
        ks = [k for k in KS if k <= trained_k]
        fvu_curve = elbow(bundle, layer, keys, ks)
        heads = {}
        for lay, head in bundle.retrieval_heads:
            if lay != layer:
                continue
            head_keys = keys.reshape(-1, n_kv, head_dim)[:, head // group]
            sample = head_keys[torch.randperm(len(head_keys), generator=generator)[:4000]]
            centred = asked[layer][:, head] - bundle.query_means[layer][head]
            fid = logit_fidelity(centred, sample, reconstruct(bundle, layer, sample))
            heads[f"{lay}:{head}"] = fid.__dict__
        report["layers"][str(layer)] = {  # type: ignore[index]
            "k": trained_k,
            "fvu": fvu_curve[-1],
            "elbow": dict(zip(map(str, ks), fvu_curve, strict=True)),
            "logit_fidelity": heads,
        }
    held_out = np.concatenate([tokenize(loaded.tokenizer, t).input_ids for t in texts])
    held_out = held_out[: args.max_tokens]
    base = perplexity(loaded.model, held_out)
    with reconstructed_keys(loaded.model, bundle):
        with_k = perplexity(loaded.model, held_out)
    report["perplexity"] = {
        "tokens": int(len(held_out)),
        "original": base,
        "keys_reconstructed": with_k,
        "relative_change": with_k / base - 1,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=1))
    lines = [
        "| layer | k | held-out FVU | FVU at k=1/2/4/8/16/32 | logit corr (head) "
        "| top-10 overlap |",
        "|---|---|---|---|---|---|",
    ]
    for layer, row in report["layers"].items():  # type: ignore[attr-defined]
        curve = " / ".join(f"{v:.3f}" for v in row["elbow"].values())
        for head, fid in row["logit_fidelity"].items():
            lines.append(
                f"| {layer} | {row['k']} | {row['fvu']:.3f} | {curve} | "
                f"{fid['correlation']:.3f} ({head}) | {fid['top_overlap']:.2f} |"
            )
    ppl = report["perplexity"]
    lines += [
        "",
        f"Perplexity on {ppl['tokens']} held-out tokens: {ppl['original']:.2f} original, "  # type: ignore[index]
        f"{ppl['keys_reconstructed']:.2f} with keys of layers {layers} reconstructed "  # type: ignore[index]
        f"({100 * ppl['relative_change']:+.1f}%).",  # type: ignore[index]
    ]
    args.out.with_suffix(".md").write_text("\n".join(lines) + "\n")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        for layer, row in report["layers"].items():  # type: ignore[attr-defined]
            ax.plot(
                [int(k) for k in row["elbow"]],
                list(row["elbow"].values()),
                "o-",
                label=f"layer {layer} keys",
            )
        ax.set_xscale("log", base=2)
        ax.set_xlabel("active latents k")
        ax.set_ylabel("held-out FVU")
        ax.set_title("Key reconstruction against k")
        ax.legend()
        fig.tight_layout()
        fig.savefig(args.out.with_suffix(".png"), dpi=120)
    except ImportError:
        print("matplotlib is not installed; skipped the elbow plot")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
