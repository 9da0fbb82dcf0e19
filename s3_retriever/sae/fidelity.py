"""How faithful an SAE bundle is to the model (STA-Attention's tests, plus retrieval's own).

- fraction of variance unexplained of keys, and its curve over k (the "semantic elbow");
- attention-logit fidelity: correlation and top-k overlap between ``q.k`` and ``q.k_hat`` for
  real question queries against real keys;
- the model's perplexity when every instrumented layer's keys, values or both are replaced by
  their SAE reconstructions inside the attention (STA's dual-budget test);
- the same FVU and elbow for values, when a value bundle is given.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from s3_retriever.model.loading import attention_shape, decoder_layers
from s3_retriever.sae.bundle import SAEBundle, fraction_of_variance_unexplained
from s3_retriever.sae.pursuit import code_vectors


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
    """Keys rebuilt by the layer's SAE, coded as an index codes them, back in the key space."""
    sae = bundle.saes[layer]
    mapped = bundle.map_keys(layer, keys.float())
    with torch.no_grad():
        ids, acts = code_vectors(sae, mapped, bundle.key_coding, k)
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
def reconstructed_projections(
    model: Any, bundle: SAEBundle, projection: str = "k_proj", k: int | None = None
) -> Iterator[None]:
    """Inside this block, every bundle layer's ``projection`` output is its SAE reconstruction
    (for the KV heads the layer's SAE was trained on: all, unless it is a per-head bundle).

    ``projection`` is ``k_proj`` (a key bundle) or ``v_proj`` (a value bundle); ``k`` overrides
    the number of active latents (STA's dual budget: a small k for keys, a larger one for values).
    """
    if projection not in ("k_proj", "v_proj"):
        raise ValueError(f"projection must be 'k_proj' or 'v_proj', got {projection!r}")
    _, _, n_kv, head_dim = attention_shape(model)
    layers = decoder_layers(model)
    handles = []

    def hook_for(layer: int) -> Any:
        # A per-head bundle only swaps the heads it was trained on: those are the keys an index
        # encodes, and the other heads' keys were never meant to pass through it.
        trained = bundle.trained_kv_heads(layer, n_kv)

        def hook(_module: Any, _inputs: Any, output: torch.Tensor) -> torch.Tensor:
            heads = output.reshape(*output.shape[:-1], n_kv, head_dim).float().clone()
            heads[..., trained, :] = reconstruct(bundle, layer, heads[..., trained, :], k)
            return heads.reshape(output.shape).to(output.dtype)

        return hook

    try:
        for layer in bundle.layers:
            module = getattr(layers[layer].self_attn, projection)
            handles.append(module.register_forward_hook(hook_for(layer)))
        yield
    finally:
        for handle in handles:
            handle.remove()


def reconstructed_keys(model: Any, bundle: SAEBundle) -> contextlib.AbstractContextManager[None]:
    """Inside this block, every bundle layer's ``k_proj`` output is its SAE reconstruction."""
    return reconstructed_projections(model, bundle, "k_proj")


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


ELBOW_KS = (1, 2, 4, 8, 16, 32, 64, 128)

DUAL_BUDGETS = ((8, 8), (8, 16), (8, 32), (16, 16), (32, 32))
"""(k for keys, k for values) pairs for the perplexity test: STA's dual budget is a small k for
keys (its key elbow sits near 8) and a larger one for values (16 of 128 dims there); the equal-k
pairs show which of the two needs more latents."""


def dual_budget_perplexity(
    model: Any,
    keys: SAEBundle,
    values: SAEBundle,
    token_ids: np.ndarray,
    budgets: Sequence[tuple[int, int]] = DUAL_BUDGETS,
    known: dict[tuple[int | None, int | None], float] | None = None,
) -> list[dict[str, float]]:
    """Perplexity with keys, values, or both replaced by SAE reconstructions (STA's dual budget).

    Returns one row per ``(k_keys, k_values)``: the three perplexities. Each budget's k is clamped
    to the k its SAEs were trained at, since more latents than that were never trained to help.
    ``known`` holds perplexities already measured, keyed ``(k_keys or None, k_values or None)``.
    """
    cache: dict[tuple[int | None, int | None], float] = dict(known or {})

    def measured(k_keys: int | None, k_values: int | None) -> float:
        if (k_keys, k_values) not in cache:
            with contextlib.ExitStack() as stack:
                if k_keys is not None:
                    stack.enter_context(reconstructed_projections(model, keys, "k_proj", k_keys))
                if k_values is not None:
                    stack.enter_context(
                        reconstructed_projections(model, values, "v_proj", k_values)
                    )
                cache[(k_keys, k_values)] = perplexity(model, token_ids)
        return cache[(k_keys, k_values)]

    key_cap = min(sae.config.k for sae in keys.saes.values())
    value_cap = min(sae.config.k for sae in values.saes.values())
    rows = []
    for k_keys, k_values in budgets:
        k_keys, k_values = min(k_keys, key_cap), min(k_values, value_cap)
        row = {
            "k_keys": k_keys,
            "k_values": k_values,
            "keys_only": measured(k_keys, None),
            "values_only": measured(None, k_values),
            "keys_and_values": measured(k_keys, k_values),
        }
        if row not in rows:
            rows.append(row)
    return rows


def _elbow_row(bundle: SAEBundle, layer: int, vectors: torch.Tensor) -> dict[str, Any]:
    trained_k = bundle.saes[layer].config.k
    ks = [k for k in ELBOW_KS if k <= trained_k]
    curve = elbow(bundle, layer, vectors, ks)
    return {"k": trained_k, "fvu": curve[-1], "elbow": dict(zip(map(str, ks), curve, strict=True))}


def build_report(
    loaded: Any,
    bundle: SAEBundle,
    texts: Sequence[str],
    questions: Sequence[str],
    max_tokens: int = 30_000,
    seed: int = 0,
    values: SAEBundle | None = None,
    budgets: Sequence[tuple[int, int]] = DUAL_BUDGETS,
) -> dict[str, Any]:
    """Fidelity of ``bundle`` on held-out ``texts``, with logits from ``questions``' queries.

    Returns a JSON-ready dict: per layer the FVU, the elbow curve and, per retrieval head, the
    logit correlation and top-10 overlap; plus perplexity with and without reconstructed keys.
    With a value bundle ``values``, also per layer the values' FVU and elbow, and perplexity with
    keys only, values only, and both reconstructed at each ``(k_keys, k_values)`` of ``budgets``.
    """
    from s3_retriever.model.scan import tokenize
    from s3_retriever.sae.vectors import collect_vectors, question_queries, select_kv_heads

    _, n_heads, n_kv, head_dim = attention_shape(loaded.model)
    group = n_heads // n_kv
    layers = list(bundle.layers)
    value_layers = list(values.layers) if values is not None else []
    captured = collect_vectors(
        loaded.model,
        loaded.tokenizer,
        texts,
        sorted({*layers, *value_layers}),
        max_tokens,
        want_values=values is not None,
    )
    asked = question_queries(loaded.model, loaded.tokenizer, questions, layers)
    generator = torch.Generator().manual_seed(seed)
    per_layer: dict[str, Any] = {}
    for layer in layers:
        keys = captured.keys[layer]
        trained = bundle.trained_kv_heads(layer, n_kv)
        heads: dict[str, Any] = {}
        for head_layer, head in bundle.retrieval_heads:
            if head_layer != layer or not asked:
                continue
            head_keys = keys.reshape(-1, n_kv, head_dim)[:, head // group]
            sample = head_keys[torch.randperm(len(head_keys), generator=generator)[:4000]]
            centred = asked[layer][:, head]
            if layer in bundle.query_means:
                centred = centred - bundle.query_means[layer][head]
            fid = logit_fidelity(centred, sample, reconstruct(bundle, layer, sample))
            heads[f"{layer}:{head}"] = fid.__dict__
        # FVU and elbow over the keys the SAE serves: a per-head SAE is not meant for the others.
        served = select_kv_heads(keys, n_kv, trained)
        per_layer[str(layer)] = {
            **_elbow_row(bundle, layer, served),
            "kv_heads": trained,
            "logit_fidelity": heads,
        }
    if values is not None:
        for layer in value_layers:
            row = _elbow_row(values, layer, captured.values[layer])
            per_layer.setdefault(str(layer), {})["values"] = row
    held_out = np.concatenate([tokenize(loaded.tokenizer, t).input_ids for t in texts])
    held_out = held_out[:max_tokens]
    base = perplexity(loaded.model, held_out)
    with reconstructed_keys(loaded.model, bundle):
        with_keys = perplexity(loaded.model, held_out)
    report: dict[str, Any] = {
        "model": loaded.model_id,
        "sae_checksum": bundle.checksum,
        "layers": per_layer,
        "perplexity": {
            "tokens": int(len(held_out)),
            "original": base,
            "keys_reconstructed": with_keys,
            "relative_change": with_keys / base - 1,
        },
    }
    if values is not None:
        report["value_sae_checksum"] = values.checksum
        key_ks = {sae.config.k for sae in bundle.saes.values()}
        known: dict[tuple[int | None, int | None], float] = {}
        if len(key_ks) == 1:
            known[(key_ks.pop(), None)] = with_keys
        report["perplexity"]["dual_budget"] = dual_budget_perplexity(
            loaded.model, bundle, values, held_out, budgets, known
        )
    return report


def report_markdown(report: dict[str, Any]) -> str:
    """The report as markdown: a fidelity table, an elbow table and the perplexity results."""
    lines = [
        "| layer | k | held-out FVU | logit corr (head) | top-10 overlap |",
        "|---|---|---|---|---|",
    ]
    for layer, row in report["layers"].items():
        if "fvu" not in row:
            continue
        for head, fid in row["logit_fidelity"].items() or {"-": None}.items():
            corr = f"{fid['correlation']:.3f} ({head})" if fid else "-"
            overlap = f"{fid['top_overlap']:.2f}" if fid else "-"
            lines.append(f"| {layer} | {row['k']} | {row['fvu']:.3f} | {corr} | {overlap} |")
    lines += ["", *elbow_markdown(report)]
    ppl = report["perplexity"]
    lines += [
        "",
        f"Perplexity on {ppl['tokens']} held-out tokens: {ppl['original']:.2f} original, "
        f"{ppl['keys_reconstructed']:.2f} with the bundle's layers' keys reconstructed "
        f"({100 * ppl['relative_change']:+.1f}%).",
    ]
    if "dual_budget" in ppl:
        lines += ["", *_dual_budget_markdown(ppl)]
    return "\n".join(lines) + "\n"


def _elbow_rows(report: dict[str, Any]) -> list[tuple[str, str, dict[str, float]]]:
    """(layer, keys or values, {k: FVU}) for every SAE in the report."""
    rows = []
    for layer, row in report["layers"].items():
        if "elbow" in row:
            rows.append((layer, "keys", row["elbow"]))
        if "values" in row:
            rows.append((layer, "values", row["values"]["elbow"]))
    return rows


def elbow_markdown(report: dict[str, Any]) -> list[str]:
    """The semantic elbow as a table: held-out FVU at each k, one row per layer and kind."""
    rows = _elbow_rows(report)
    ks = sorted({int(k) for _, _, curve in rows for k in curve})
    lines = [
        "| layer | vectors | " + " | ".join(f"FVU at k={k}" for k in ks) + " |",
        "|---|---|" + "---|" * len(ks),
    ]
    for layer, kind, curve in rows:
        cells = [f"{curve[str(k)]:.3f}" if str(k) in curve else "-" for k in ks]
        lines.append(f"| {layer} | {kind} | " + " | ".join(cells) + " |")
    return lines


def _dual_budget_markdown(ppl: dict[str, Any]) -> list[str]:
    base = ppl["original"]

    def cell(value: float) -> str:
        return f"{value:.2f} ({100 * (value / base - 1):+.1f}%)"

    lines = [
        f"Perplexity with SAE reconstructions in the attention (original {base:.2f}):",
        "",
        "| k keys | k values | K only | V only | K + V |",
        "|---|---|---|---|---|",
    ]
    for row in ppl["dual_budget"]:
        lines.append(
            f"| {row['k_keys']} | {row['k_values']} | {cell(row['keys_only'])} | "
            f"{cell(row['values_only'])} | {cell(row['keys_and_values'])} |"
        )
    return lines


def plot_elbow(report: dict[str, Any], path: str) -> bool:
    """Draw FVU against k per layer (keys solid, values dashed) to a PNG; False without
    matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False
    rows = _elbow_rows(report)
    fig, ax = plt.subplots(figsize=(5, 3.5))
    for layer, kind, curve in rows:
        ks = [int(k) for k in curve]
        style = "o-" if kind == "keys" else "s--"
        ax.plot(ks, list(curve.values()), style, label=f"layer {layer} {kind}")
    ax.set_xscale("log", base=2)
    ax.set_xlabel("active latents k")
    ax.set_ylabel("held-out FVU")
    has_values = any(kind == "values" for _, kind, _ in rows)
    ax.set_title(("Keys and values" if has_values else "Keys") + ": reconstruction against k")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def write_report(report: dict[str, Any], stem: str | os.PathLike[str]) -> tuple[str, bool]:
    """Write ``stem``.json, .md and (with matplotlib) .png; returns (markdown, plotted)."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    stem.with_suffix(".json").write_text(json.dumps(report, indent=1))
    markdown = report_markdown(report)
    stem.with_suffix(".md").write_text(markdown)
    return markdown, plot_elbow(report, str(stem.with_suffix(".png")))
