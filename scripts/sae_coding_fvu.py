"""Held-out FVU of key SAEs coded by their encoder and by pursuit, on a vector cache's keys.

Reads keys saved by ``scripts/train_default_saes.py --vectors-cache FILE``, keeps the KV heads
each bundle was trained on (``info["key_kv_heads"]``), takes the same 10% held-out split as
training, and writes a markdown table (and JSON) of FVU per bundle, layer and coding.

    python scripts/sae_coding_fvu.py --vectors runs/vectors_hotpot_380_499.safetensors \
        --sae runs/sae_k4_rh s3_retriever/saes/SmolLM2-135M-Instruct/compact \
        --out docs/results/sae_coding_fvu
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from safetensors.torch import load_file

from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.sae.training import held_out_fvu
from s3_retriever.sae.vectors import select_kv_heads, split_held_out

N_KV_HEADS = 3
"""KV heads of SmolLM2-135M, the model the vector cache was captured from."""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vectors", type=Path, required=True, help="vector cache file")
    parser.add_argument("--sae", nargs="+", required=True, help="key SAE bundles")
    parser.add_argument("--out", required=True, help="output path stem (.json, .md)")
    args = parser.parse_args()
    cached = load_file(str(args.vectors))
    rows = []
    for folder in args.sae:
        bundle = SAEBundle.load(folder)
        for layer, sae in sorted(bundle.saes.items()):
            trained = bundle.trained_kv_heads(layer, N_KV_HEADS)
            keys = select_kv_heads(cached[f"keys.{layer}"].float(), N_KV_HEADS, trained)
            keys = bundle.map_keys(layer, keys)
            _, test = split_held_out(keys, 0.1)
            row = {"sae": folder, "layer": layer, "held_out_keys": len(test)}
            for coding in ("encoder", "pursuit"):
                row[coding] = held_out_fvu(sae, test, coding)
            rows.append(row)
            print(row, flush=True)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    command = "python scripts/sae_coding_fvu.py " + " ".join(sys.argv[1:])
    out.with_suffix(".json").write_text(json.dumps({"command": command, "rows": rows}, indent=1))
    lines = [
        "| SAE | layer | held-out keys | FVU, encoder codes | FVU, pursuit codes |",
        "|---|---|---|---|---|",
    ]
    lines += [
        f"| {r['sae']} | {r['layer']} | {r['held_out_keys']} | {r['encoder']:.3f} | "
        f"{r['pursuit']:.3f} |"
        for r in rows
    ]
    lines += ["", f"Reproduce: `{command}`", ""]
    out.with_suffix(".md").write_text("\n".join(lines))


if __name__ == "__main__":
    main()
