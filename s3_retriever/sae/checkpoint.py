"""Checkpoints of one SAE training run, so that a resumed run continues the same run.

A checkpoint is one safetensors file: the SAE's weights, Adam's moments and step counts, the
dead-latent counters and the batch sampler's RNG state, with the step, both configs and a
fingerprint of the training data in its metadata. One file written to a temporary name and
renamed into place keeps a crash during the save from leaving half a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from s3_retriever.errors import SAEError
from s3_retriever.sae.bundle import SAEConfig, TopKSAE

CHECKPOINT_FORMAT = 1

# A resumed run may train for more steps than the first one asked for; every other setting
# changes the run itself, so a checkpoint written under other settings is refused.
_RESUMABLE_CHANGES = {"steps"}


@dataclass
class TrainingState:
    """Everything that evolves during training; restoring it all makes resumption exact."""

    sae: TopKSAE
    optimiser: torch.optim.Optimizer
    since_fired: torch.Tensor
    """Training vectors seen since each latent last fired (the dead-latent clock)."""
    generator: torch.Generator
    """Draws the batches."""
    step: int = 0
    """Optimiser steps already taken."""
    train_fvu: float = float("nan")
    """FVU of the latest logged batch."""


def data_fingerprint(data: torch.Tensor) -> str:
    """sha256 of the training vectors' shape and bytes: a resume must see the same data."""
    contiguous = data.detach().float().contiguous().cpu()
    digest = hashlib.sha256(str(tuple(contiguous.shape)).encode())
    digest.update(contiguous.numpy().tobytes())
    return digest.hexdigest()


def run_settings(sae_config: SAEConfig, train_config: Any, data: torch.Tensor) -> dict[str, Any]:
    """What identifies a run: the SAE's shape, the training settings and the data's fingerprint."""
    return {
        "sae": asdict(sae_config),
        "train": asdict(train_config),
        "data": data_fingerprint(data),
    }


def save_checkpoint(
    path: str | os.PathLike[str], state: TrainingState, settings: dict[str, Any]
) -> None:
    """Write ``state`` of the run identified by ``settings`` to ``path`` atomically."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {f"sae.{n}": p.detach().float().contiguous() for n, p in state.sae.named_parameters()}
    params = list(state.sae.parameters())
    for index, param in enumerate(params):
        for name, value in state.optimiser.state.get(param, {}).items():
            tensors[f"adam.{index}.{name}"] = torch.as_tensor(value).detach().clone().contiguous()
    tensors["since_fired"] = state.since_fired.contiguous()
    tensors["generator"] = state.generator.get_state().contiguous()
    metadata = {
        "format": str(CHECKPOINT_FORMAT),
        "step": str(state.step),
        "train_fvu": repr(state.train_fvu),
        "settings": json.dumps(settings, sort_keys=True),
    }
    partial = path.with_name(path.name + ".partial")
    save_file(tensors, str(partial), metadata=metadata)
    os.replace(partial, path)


def load_checkpoint(
    path: str | os.PathLike[str], state: TrainingState, settings: dict[str, Any]
) -> None:
    """Restore ``state`` in place from ``path``; refuses a checkpoint of a run other than
    ``settings``."""
    path = Path(path)
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata() or {}
        tensors = {name: handle.get_tensor(name) for name in handle.keys()}  # noqa: SIM118
    if metadata.get("format") != str(CHECKPOINT_FORMAT):
        raise SAEError(
            f"{path} is not an SAE training checkpoint of format {CHECKPOINT_FORMAT}; "
            "delete it or train without --resume."
        )
    _refuse_other_run(path, json.loads(metadata["settings"]), settings)
    state.sae.load_state_dict({n[len("sae.") :]: t for n, t in tensors.items() if n[:4] == "sae."})
    params = list(state.sae.parameters())
    optimiser_state = state.optimiser.state_dict()
    optimiser_state["state"] = {}
    for name, value in tensors.items():
        if name.startswith("adam."):
            _, index, key = name.split(".", 2)
            optimiser_state["state"].setdefault(int(index), {})[key] = value
    if len(optimiser_state["state"]) not in (0, len(params)):
        raise SAEError(f"{path} holds optimiser state for some parameters only; it is damaged.")
    state.optimiser.load_state_dict(optimiser_state)
    state.since_fired.copy_(tensors["since_fired"])
    state.generator.set_state(tensors["generator"])
    state.step = int(metadata["step"])
    state.train_fvu = float(metadata["train_fvu"])


def _refuse_other_run(path: Path, saved: dict[str, Any], wanted: dict[str, Any]) -> None:
    if saved["data"] != wanted["data"]:
        raise SAEError(
            f"{path} was trained on other vectors than these; resume with the same text, layers "
            "and --max-tokens, or start afresh without --resume."
        )
    if saved["sae"] != wanted["sae"]:
        raise SAEError(
            f"{path} holds an SAE shaped {saved['sae']}, not {wanted['sae']}; resume with the "
            "same --latents and k, or start afresh without --resume."
        )
    changed = {
        key
        for key in saved["train"].keys() | wanted["train"].keys()
        if saved["train"].get(key) != wanted["train"].get(key)
    } - _RESUMABLE_CHANGES
    if changed:
        raise SAEError(
            f"{path} was written with other training settings ({', '.join(sorted(changed))}); "
            "only the number of steps may change on resume."
        )
