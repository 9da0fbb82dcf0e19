"""Rank (layer, query head) pairs by the attention their question pays to gold evidence, over
several tasks at once (the query-focused retrieval score of QRHead, arXiv 2506.09944).

For every tuning example, the documents are scanned once keeping the keys of every layer asked
for; each head's content-word question rows then attend over the document (a softmax over its
positions, pre-RoPE and centred exactly as the engine scores: the SAE bundle's mean query where
it has one, none elsewhere), and the head scores the attention mass that lands on the gold
evidence, averaged over rows and examples. Each task's scores are divided by that task's mean
over heads, so every task weighs the same in the mean that ranks heads.

    python scripts/score_heads_mixed.py --data ../shared/data --layers 0-11 \
        --out docs/results/heads_mixed.json

Tuning questions only (docs/results_corpus.md): hotpotqa-3k 300-339, qmsum 100-139, needles 0-7.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from s3_retriever.eval.harness import TASKS
from s3_retriever.model.loading import attention_shape, load_model
from s3_retriever.model.scan import ScanConfig, Scanner, tokenize
from s3_retriever.sae.bundle import SAEBundle, shipped_bundle_dir
from s3_retriever.search.question import content_token_indices

TUNING = {"hotpotqa-3k": (40, 300), "qmsum": (40, 100), "needles": (8, 0)}
"""Task -> (questions, first question) of its tuning split."""


def gold_mask(example, doc_index: int, starts: np.ndarray, ends: np.ndarray) -> np.ndarray:
    """Tokens of document ``doc_index`` that overlap the example's gold evidence."""
    mask = np.zeros(len(starts), dtype=bool)
    for doc, start, end in example.gold:
        if doc == doc_index:
            mask |= (ends > start) & (starts < end)
    return mask


def head_masses(
    keys: dict[int, torch.Tensor],
    questions: dict[int, torch.Tensor],
    gold: np.ndarray,
    means: dict[int, torch.Tensor],
    group: int,
) -> np.ndarray:
    """(layers, heads) mean attention mass of the question rows on the gold tokens."""
    layers = sorted(keys)
    gold_t = torch.from_numpy(gold)
    out = np.zeros((len(layers), next(iter(questions.values())).shape[1]))
    for i, layer in enumerate(layers):
        q = questions[layer]  # (rows, heads, dim)
        if layer in means:
            q = q - means[layer][None]
        k = keys[layer]  # (tokens, kv_heads, dim)
        for head in range(q.shape[1]):
            logits = q[:, head, :] @ k[:, head // group, :].T / np.sqrt(q.shape[2])
            attention = torch.softmax(logits, dim=1)
            out[i, head] = float(attention[:, gold_t].sum(dim=1).mean())
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default="../shared/data")
    parser.add_argument("--layers", default="0-11")
    parser.add_argument("--tasks", default=",".join(TUNING))
    parser.add_argument("--out", default="runs/heads_mixed.json")
    args = parser.parse_args()
    lo, hi = (int(x) for x in args.layers.split("-"))
    layers = list(range(lo, hi + 1))
    lm = load_model(None)
    _, n_heads, n_kv, _ = attention_shape(lm.model)
    group = n_heads // n_kv
    bundle = SAEBundle.load(shipped_bundle_dir(lm.model_id))
    means = {layer: m.float() for layer, m in bundle.query_means.items()}
    scanner = Scanner(
        lm.model,
        layers,
        layers,
        ScanConfig(show_progress=False),
        bos_token_id=lm.tokenizer.bos_token_id,
    )
    per_task: dict[str, np.ndarray] = {}
    started = time.time()
    for task in args.tasks.split(","):
        n, skip = TUNING[task]
        examples = TASKS[task](Path(args.data), n, skip)
        totals, counted = np.zeros((len(layers), n_heads)), 0
        scanned: dict[tuple[str, ...], list[tuple[dict[int, torch.Tensor], np.ndarray]]] = {}
        for example in examples:
            key = tuple(example.doc_ids)
            if key not in scanned:
                scanned.clear()  # one document set in memory at a time (examples come grouped)
                docs = []
                for text in example.documents:
                    tokens = tokenize(lm.tokenizer, text)
                    parts: dict[int, list[torch.Tensor]] = {layer: [] for layer in layers}
                    for capture in scanner.scan([tokens]):
                        for layer in layers:
                            parts[layer].append(capture.keys[layer].float().cpu())
                    docs.append(({la: torch.cat(p) for la, p in parts.items()}, tokens))
                scanned[key] = docs  # type: ignore[assignment]
            text = example.question
            question = tokenize(lm.tokenizer, text)
            projected = scanner.project_queries(question.input_ids)
            content = content_token_indices(text, question.starts, question.ends)
            rows = content if len(content) else np.arange(len(question))
            rows = rows[rows < next(iter(projected.values())).shape[0]]
            queries = {layer: projected[layer][rows] for layer in layers}
            for doc_index, (keys, tokens) in enumerate(scanned[key]):  # type: ignore[misc]
                gold = gold_mask(example, doc_index, tokens.starts, tokens.ends)
                if gold.any():
                    totals += head_masses(keys, queries, gold, means, group)
                    counted += 1
        per_task[task] = totals / max(counted, 1)
        print(f"{task}: {counted} gold documents, {time.time() - started:.0f}s", flush=True)
    normalised = np.mean([s / s.mean() for s in per_task.values()], axis=0)
    ranking = sorted(
        (
            {
                "layer": layers[i],
                "head": h,
                "score": float(normalised[i, h]),
                **{task: float(s[i, h]) for task, s in per_task.items()},
            }
            for i in range(len(layers))
            for h in range(n_heads)
        ),
        key=lambda row: -row["score"],
    )
    for row in ranking[:20]:
        print(row)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"args": vars(args), "ranking": ranking}, indent=1))


if __name__ == "__main__":
    main()
