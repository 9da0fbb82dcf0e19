"""Rank (layer, query head) pairs by how well exact attention finds gold HotpotQA passages.

Each haystack is scanned once, keeping keys at every candidate layer; every head is then scored
offline. Passage score = mean of its 8 best positions (docs/measurements.md); metric = recall@4
of the two gold passages. Also compares query centring: none, mean text query, mean question query.

    python scripts/sweep_heads.py --data ../shared/data --skip 300 --n 60 --out runs/heads.json

``--model`` sweeps another model (a folder or a name ``load_model`` knows, e.g.
``Qwen2.5-Coder-0.5B-Instruct`` once installed); the default is the bundled SmolLM2.
"""

from __future__ import annotations

import argparse
import json
import re
import time
from pathlib import Path

import numpy as np
import torch

from s3_retriever.eval.data import load_hotpotqa_haystacks
from s3_retriever.model.loading import attention_shape, load_model
from s3_retriever.model.scan import ScanConfig, Scanner, tokenize

_PASSAGE = re.compile(r"Passage \d+:\n")


def passage_of_tokens(
    text: str, token_starts: np.ndarray
) -> tuple[np.ndarray, list[tuple[int, int]]]:
    bounds = [m.end() for m in _PASSAGE.finditer(text)]
    ranges = [
        (b, (bounds[i + 1] if i + 1 < len(bounds) else len(text))) for i, b in enumerate(bounds)
    ]
    starts = np.array([r[0] for r in ranges])
    owner = np.searchsorted(starts, token_starts, side="right") - 1
    return owner, ranges


def attention(q: np.ndarray, k: np.ndarray) -> np.ndarray:
    logits = (q @ k.T) / np.sqrt(q.shape[1])
    logits -= logits.max(axis=1, keepdims=True)
    w = np.exp(logits)
    w /= w.sum(axis=1, keepdims=True)
    return w.mean(axis=0)


def passage_recall(scores: np.ndarray, owner: np.ndarray, n_passages: int, gold: set[int]) -> float:
    pooled = np.full(n_passages, -np.inf)
    for p in range(n_passages):
        s = scores[owner == p]
        if len(s):
            pooled[p] = np.sort(s)[-8:].mean()
    top = set(np.argsort(-pooled)[:4].tolist())
    return len(top & gold) / len(gold)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--skip", type=int, default=300)
    parser.add_argument("--n", type=int, default=60)
    parser.add_argument("--layers", default="0-11")
    parser.add_argument("--out", default="runs/heads.json")
    parser.add_argument("--model", default=None, help="model to sweep (default: bundled SmolLM2)")
    args = parser.parse_args()
    lo, hi = (int(x) for x in args.layers.split("-"))
    layers = list(range(lo, hi + 1))
    lm = load_model(args.model)
    _, n_heads, n_kv, head_dim = attention_shape(lm.model)
    group = n_heads // n_kv
    scanner = Scanner(
        lm.model,
        layers,
        layers,
        ScanConfig(chunk_size=1024, show_progress=False),
        bos_token_id=lm.tokenizer.bos_token_id,
    )
    examples = load_hotpotqa_haystacks(
        args.data, n_questions=args.n, target_words=3000, skip=args.skip
    )
    cached = []
    text_q_sum = {layer: torch.zeros(n_heads, head_dim, dtype=torch.float64) for layer in layers}
    text_q_n = 0
    t0 = time.time()
    for ex in examples:
        text = ex.documents[0]
        tok = tokenize(lm.tokenizer, text)
        keys = {layer: [] for layer in layers}
        for cap in scanner.scan([tok], want_queries=True):
            for layer in layers:
                keys[layer].append(cap.keys[layer])
                text_q_sum[layer] += cap.queries[layer].double().sum(dim=0)
            text_q_n += cap.keys[layers[0]].shape[0]
        keys_np = {layer: torch.cat(v).numpy() for layer, v in keys.items()}
        qtok = tokenize(lm.tokenizer, ex.question)
        qv = {layer: v.numpy() for layer, v in scanner.project_queries(qtok.input_ids).items()}
        owner, ranges = passage_of_tokens(text, tok.starts)
        gold = {i for i, (a, b) in enumerate(ranges) for _, gs, ge in ex.gold if a <= gs < b}
        cached.append((keys_np, qv, owner, len(ranges), gold))
    print(f"scanned {len(examples)} haystacks in {time.time() - t0:.0f}s")
    text_mean = {layer: (s / text_q_n).float().numpy() for layer, s in text_q_sum.items()}
    question_mean = {
        layer: np.concatenate([c[1][layer] for c in cached]).mean(axis=0) for layer in layers
    }
    results = []
    for centring in ("none", "text", "question"):
        for layer in layers:
            for head in range(n_heads):
                recalls = []
                for keys_np, qv, owner, n_p, gold in cached:
                    q = qv[layer][:, head, :]
                    if centring == "text":
                        q = q - text_mean[layer][head]
                    elif centring == "question":
                        q = q - question_mean[layer][head]
                    scores = attention(q, keys_np[layer][:, head // group, :])
                    recalls.append(passage_recall(scores, owner, n_p, gold))
                results.append(
                    {
                        "centring": centring,
                        "layer": layer,
                        "head": head,
                        "recall@4": float(np.mean(recalls)),
                    }
                )
    results.sort(key=lambda r: -r["recall@4"])
    for centring in ("none", "text", "question"):
        subset = [r for r in results if r["centring"] == centring]
        print(centring, "mean over heads {:.3f}".format(np.mean([r["recall@4"] for r in subset])))
        for r in subset[:8]:
            print("   ", r)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "results": results}, indent=1))


if __name__ == "__main__":
    main()
