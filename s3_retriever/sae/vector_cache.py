"""A file of captured keys (and values), so that several SAE trainings on the same text scan once.

Scanning the training text is the slow part of a short SAE run on a CPU; a sweep over dictionary
sizes, k or objectives reads the same vectors every time. The file holds the keys (and values)
per layer in bf16, the precision they are captured in, so a reload is exact; corpus queries are
not kept (they are large and only give query centres when no questions are given). It also
holds the settings it was made with, and a file made with other settings is refused.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s3_retriever.errors import SAEError
from s3_retriever.sae.vectors import CapturedVectors

CACHE_FORMAT = 1


def save_vectors(
    path: str | os.PathLike[str], captured: CapturedVectors, settings: dict[str, Any]
) -> None:
    """Write ``captured``'s keys and values, tagged with ``settings``, to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"keys.{layer}": v.to(torch.bfloat16) for layer, v in captured.keys.items()}
    tensors.update(
        {f"values.{layer}": v.to(torch.bfloat16) for layer, v in captured.values.items()}
    )
    metadata = {"format": str(CACHE_FORMAT), "settings": json.dumps(settings, sort_keys=True)}
    partial = path.with_name(path.name + ".partial")
    save_file({n: t.contiguous() for n, t in tensors.items()}, str(partial), metadata=metadata)
    os.replace(partial, path)


def load_vectors(path: str | os.PathLike[str], settings: dict[str, Any]) -> CapturedVectors:
    """Read a file written by :func:`save_vectors` with the same ``settings`` (float32 tensors).

    Raises :class:`SAEError` when the file is of another format or was made with other settings.
    """
    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    if metadata.get("format") != str(CACHE_FORMAT):
        raise SAEError(f"{path} is not a vector cache of format {CACHE_FORMAT}; delete it.")
    stored = json.loads(metadata.get("settings", "null"))
    expected = json.loads(json.dumps(settings, sort_keys=True))
    if stored != expected:
        raise SAEError(
            f"{path} was captured with settings {stored}, not {expected}; delete it or pass "
            f"another cache path."
        )
    captured = CapturedVectors(keys={}, queries={})
    for name, tensor in tensors.items():
        kind, layer = name.split(".")
        target = captured.keys if kind == "keys" else captured.values
        target[int(layer)] = tensor.float()
    return captured
