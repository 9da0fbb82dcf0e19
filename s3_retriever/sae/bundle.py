"""Top-K sparse autoencoders (STA-Attention) and the per-model bundle that ships them.

``z = TopK(ReLU(W_enc (x - b_dec) + b_enc))`` and ``x_hat = z W_dec + b_dec``. Top-K instead of an
L1 penalty keeps the selected activations unshrunk, so dot products with the reconstruction (the
attention logits) survive. Decoder atoms are rows of unit norm.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from safetensors.torch import load_file, save_file
from torch import nn

from s3_retriever.errors import SAEError
from s3_retriever.files.untrusted import UntrustedFileError, read_json_file, safetensors_shapes

BUNDLE_FORMAT = 1

KeyCoding = Literal["encoder", "pursuit"]
KEY_CODINGS: tuple[str, ...] = ("encoder", "pursuit")


@dataclass(frozen=True)
class SAEConfig:
    """Shape of one Top-K SAE."""

    d_in: int
    """Input width: the model's head dimension (one key or query head at a time)."""
    n_latents: int = 2048
    """Dictionary size (number of decoder atoms)."""
    k: int = 32
    """Active latents per vector. STA reports a 'semantic elbow' for keys near k = 8."""

    def __post_init__(self) -> None:
        if self.d_in < 1 or self.n_latents < 1:
            raise ValueError(f"d_in and n_latents must be positive, got {self}")
        if not 1 <= self.k <= self.n_latents:
            raise ValueError(f"k must be in 1..n_latents ({self.n_latents}), got {self.k}")


class TopKSAE(nn.Module):
    """One Top-K SAE; shared by all KV heads of its layer."""

    def __init__(self, config: SAEConfig) -> None:
        super().__init__()
        self.config = config
        self.W_enc = nn.Parameter(torch.zeros(config.n_latents, config.d_in))
        self.b_enc = nn.Parameter(torch.zeros(config.n_latents))
        self.W_dec = nn.Parameter(torch.zeros(config.n_latents, config.d_in))
        self.b_dec = nn.Parameter(torch.zeros(config.d_in))

    def pre_activations(self, x: torch.Tensor) -> torch.Tensor:
        """``ReLU(W_enc (x - b_dec) + b_enc)`` for a (..., d_in) batch."""
        centred = (x.to(self.W_enc.dtype) - self.b_dec).reshape(-1, x.shape[-1])
        # addmm adds the bias inside the matmul and relu_ works in place: two fewer passes over
        # the (vectors x latents) matrix, the largest tensor of key encoding.
        pre = torch.addmm(self.b_enc, centred, self.W_enc.T).relu_()
        return pre.reshape(*x.shape[:-1], self.W_enc.shape[0])

    def encode(self, x: torch.Tensor, k: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """Top-k latent ids (int64) and their activations, each of shape (..., k)."""
        acts, ids = self.pre_activations(x).topk(k or self.config.k, dim=-1, sorted=False)
        return ids, acts

    def decode(self, ids: torch.Tensor, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction from sparse codes: ``sum_j a_j d_j + b_dec``."""
        atoms = self.W_dec[ids]  # (..., k, d_in)
        return (acts.unsqueeze(-1) * atoms).sum(dim=-2) + self.b_dec

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ids, acts = self.encode(x)
        return self.decode(ids, acts)

    @torch.no_grad()
    def normalize_decoder(self) -> None:
        """Keep atoms at unit norm, so activations carry the whole scale of each direction."""
        norms = self.W_dec.norm(dim=-1, keepdim=True).clamp_min(1e-8)
        self.W_dec.div_(norms)


def fraction_of_variance_unexplained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """FVU = ||x - x_hat||^2 / ||x - mean(x)||^2 over a batch of vectors."""
    residual = (x - x_hat).pow(2).sum()
    total = (x - x.mean(dim=0, keepdim=True)).pow(2).sum().clamp_min(1e-12)
    return float(residual / total)


@dataclass
class SAEBundle:
    """Everything model-specific that scoring needs: SAEs per layer and query centres.

    A bundle is a folder: ``config.json``, ``layer_XX.safetensors`` per layer and
    ``query_means.safetensors``. Its checksum ties saved indexes to the exact weights.
    """

    model_id: str
    saes: dict[int, TopKSAE]
    """layer -> SAE shared by that layer's KV heads."""
    query_means: dict[int, torch.Tensor]
    """layer -> (query_heads, head_dim) mean pre-RoPE query, subtracted before scoring: in the head
    sweep of docs/method.md (settings table) mean recall@4 over heads rose from 0.083 without
    centring to 0.138 with it."""
    retrieval_heads: tuple[tuple[int, int], ...] = ()
    """(layer, query head) pairs chosen by measurement for this model; empty: use defaults."""
    info: dict[str, Any] = field(default_factory=dict)
    """Training settings and fidelity numbers, stored verbatim in config.json."""
    checksum: str = ""
    """sha256 over the bundle files, set by :meth:`load` and :meth:`save`."""
    key_maps: dict[int, torch.Tensor] = field(default_factory=dict)
    """layer -> symmetric (head_dim, head_dim) map ``A`` applied to keys before encoding; queries
    get ``A^-1``, so ``q.k`` is unchanged while the SAE's squared error is measured in the metric
    that queries see. Absent layers use the identity (plain reconstruction)."""
    key_coding: KeyCoding = "encoder"
    """How indexing turns a key into its k postings: ``encoder`` (the SAE's own Top-K encoder)
    or ``pursuit`` (non-negative orthogonal matching pursuit over the decoder atoms,
    :mod:`s3_retriever.sae.pursuit`): a closer code of the same size for some more index-time
    compute. Part of the bundle, so an index and its appends always use one coding."""

    def __post_init__(self) -> None:
        if self.key_coding not in KEY_CODINGS:
            raise SAEError(
                f"key_coding must be one of {', '.join(KEY_CODINGS)}, got {self.key_coding!r}."
            )

    def map_keys(self, layer: int, keys: torch.Tensor) -> torch.Tensor:
        """Keys in the space the layer's SAE was trained in."""
        key_map = self.key_maps.get(layer)
        return keys if key_map is None else keys.float() @ key_map

    def map_queries(self, layer: int, queries: np.ndarray) -> np.ndarray:
        """Queries in the dual space: ``(A^-1 q) . (A k) = q . k`` for symmetric ``A``."""
        key_map = self.key_maps.get(layer)
        if key_map is None:
            return queries
        return np.asarray(queries @ np.linalg.inv(key_map.double().numpy()), dtype=np.float32)

    def trained_kv_heads(self, layer: int, n_kv: int) -> list[int]:
        """The KV heads the layer's SAE was trained on (``info["key_kv_heads"]``), else all."""
        trained = (self.info.get("key_kv_heads") or {}).get(str(layer))
        return list(range(n_kv)) if trained is None else [int(h) for h in trained]

    @property
    def layers(self) -> tuple[int, ...]:
        return tuple(sorted(self.saes))

    def save(self, folder: str | Path) -> str:
        """Write the bundle (safetensors + JSON, no pickle); returns its checksum."""
        folder = Path(folder)
        folder.mkdir(parents=True, exist_ok=True)
        # Files of an earlier bundle in this folder would count in the checksum and be loaded.
        for stale in folder.glob("*.safetensors"):
            stale.unlink()
        layers_cfg = {}
        for layer, sae in sorted(self.saes.items()):
            tensors = {n: p.detach().float().contiguous().cpu() for n, p in sae.named_parameters()}
            save_file(tensors, str(folder / f"layer_{layer:02d}.safetensors"))
            layers_cfg[str(layer)] = asdict(sae.config)
        means = {
            f"layer_{layer:02d}": m.float().contiguous() for layer, m in self.query_means.items()
        }
        save_file(means, str(folder / "query_means.safetensors"))
        if self.key_maps:
            maps = {
                f"layer_{layer:02d}": m.float().contiguous() for layer, m in self.key_maps.items()
            }
            save_file(maps, str(folder / "key_maps.safetensors"))
        config = {
            "format": BUNDLE_FORMAT,
            "model_id": self.model_id,
            "layers": layers_cfg,
            "retrieval_heads": [list(h) for h in self.retrieval_heads],
            "key_coding": self.key_coding,
            "info": self.info,
        }
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        self.checksum = bundle_checksum(folder)
        return self.checksum

    @classmethod
    def load(cls, folder: str | Path) -> SAEBundle:
        """Read a bundle written by :meth:`save`; refuses missing files and wrong shapes."""
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise SAEError(
                f"{folder} holds no SAE bundle (config.json missing). Train one with "
                f"`s3-retriever train-sae` or pass the folder of a shipped bundle."
            )
        try:
            config = read_json_file(config_path)
        except UntrustedFileError as exc:
            raise SAEError(str(exc)) from exc
        version = config.get("format") if isinstance(config, dict) else None
        if version != BUNDLE_FORMAT:
            raise SAEError(
                f"{folder} is SAE bundle format {version!r}; this version reads "
                f"format {BUNDLE_FORMAT}. Retrain the SAEs or upgrade s3-retriever."
            )
        try:
            return cls._from_config(folder, config)
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise SAEError(
                f"{config_path} is malformed ({type(exc).__name__}: {exc}); retrain or re-copy "
                f"the SAE bundle."
            ) from exc

    @classmethod
    def _from_config(cls, folder: Path, config: dict[str, Any]) -> SAEBundle:
        saes: dict[int, TopKSAE] = {}
        for layer_key, shape in config["layers"].items():
            layer = int(layer_key)
            if layer < 0:
                raise SAEError(f"{folder}/config.json names layer {layer}; layers start at 0.")
            sae_config = SAEConfig(**shape)
            path = folder / f"layer_{layer:02d}.safetensors"
            if not path.is_file():
                raise SAEError(f"{path} is missing from the SAE bundle; retrain or re-copy it.")
            # Shapes are compared from the file header before any tensor is allocated, so a
            # crafted config or file cannot make loading reserve memory it does not hold.
            expected = {
                "W_enc": (sae_config.n_latents, sae_config.d_in),
                "b_enc": (sae_config.n_latents,),
                "W_dec": (sae_config.n_latents, sae_config.d_in),
                "b_dec": (sae_config.d_in,),
            }
            try:
                found = safetensors_shapes(path)
            except UntrustedFileError as exc:
                raise SAEError(f"{exc}; retrain or re-copy the SAE bundle.") from exc
            if expected != found:
                raise SAEError(f"{path} has tensors {found}, but its config says {expected}.")
            sae = TopKSAE(sae_config)
            sae.load_state_dict(_finite_tensors(path))
            sae.eval().requires_grad_(False)
            saes[layer] = sae
        query_means = _layer_tensors(folder / "query_means.safetensors", ndim=2)
        key_maps = _layer_tensors(folder / "key_maps.safetensors", ndim=2)
        for layer, key_map in key_maps.items():
            d_in = saes[layer].config.d_in if layer in saes else None
            if d_in is None or tuple(key_map.shape) != (d_in, d_in):
                raise SAEError(
                    f"{folder}/key_maps.safetensors: the map of layer {layer} has shape "
                    f"{tuple(key_map.shape)}, but that layer's SAE takes {d_in}-dim keys (a "
                    f"square {d_in}x{d_in} map is needed); retrain or re-copy the SAE bundle."
                )
        return cls(
            key_maps=key_maps,
            model_id=config["model_id"],
            saes=saes,
            query_means=query_means,
            retrieval_heads=tuple((int(a), int(b)) for a, b in config.get("retrieval_heads", [])),
            key_coding=config.get("key_coding", "encoder"),
            info=config.get("info", {}),
            checksum=bundle_checksum(folder),
        )

    def check_fits(self, n_layers: int, n_heads: int, head_dim: int) -> None:
        """Refuse a bundle whose shapes do not fit the model it is paired with."""
        for layer, sae in self.saes.items():
            if layer >= n_layers:
                raise SAEError(
                    f"The SAE bundle has layer {layer}, but the model has {n_layers} layers. "
                    f"These SAEs were trained for another model ({self.model_id})."
                )
            if sae.config.d_in != head_dim:
                raise SAEError(
                    f"SAE for layer {layer} takes {sae.config.d_in}-dim vectors, but the model's "
                    f"head dimension is {head_dim}. These SAEs belong to {self.model_id}."
                )
        for layer, means in self.query_means.items():
            if tuple(means.shape) != (n_heads, head_dim) or layer >= n_layers:
                raise SAEError(
                    f"Query means for layer {layer} have shape {tuple(means.shape)}, but the model "
                    f"has {n_heads} query heads of {head_dim} dims over {n_layers} layers."
                )


def _finite_tensors(path: Path) -> dict[str, torch.Tensor]:
    """The tensors of a safetensors file, header checked first; refuses NaN and infinity (one
    NaN weight makes every score NaN)."""
    try:
        safetensors_shapes(path)
        tensors = load_file(str(path))
    except (UntrustedFileError, OSError, RuntimeError) as exc:
        raise SAEError(f"{exc}; retrain or re-copy the SAE bundle.") from exc
    except Exception as exc:  # safetensors raises its own SafetensorError
        raise SAEError(f"{path} is not a valid safetensors file ({exc}); re-copy it.") from exc
    for name, tensor in tensors.items():
        if tensor.is_floating_point() and not bool(torch.isfinite(tensor).all()):
            raise SAEError(
                f"{path}: tensor {name!r} holds NaN or infinite values; retrain or re-copy the "
                f"SAE bundle."
            )
    return tensors


def _layer_tensors(path: Path, ndim: int) -> dict[int, torch.Tensor]:
    """``layer_XX`` tensors of an optional per-layer file, by layer; {} when it is absent."""
    if not path.is_file():
        return {}
    out: dict[int, torch.Tensor] = {}
    for name, tensor in _finite_tensors(path).items():
        prefix, _, number = name.partition("_")
        if prefix != "layer" or not number.isdigit() or tensor.ndim != ndim:
            raise SAEError(
                f"{path}: tensor {name!r} of shape {tuple(tensor.shape)} is not a layer_XX "
                f"tensor of {ndim} dimensions; retrain or re-copy the SAE bundle."
            )
        out[int(number)] = tensor
    return out


def bundle_checksum(folder: Path) -> str:
    """sha256 over every bundle file's name and bytes, in name order."""
    digest = hashlib.sha256()
    for path in sorted(folder.iterdir()):
        if path.is_file() and path.suffix in {".json", ".safetensors"}:
            digest.update(path.name.encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()


COMPACT_VARIANT = "compact"
"""Shipped bundle variant for small indexes: k = 4 per-head dictionaries, pursuit-coded."""


def shipped_bundle_dir(model_id: str, variant: str | None = None) -> Path:
    """Folder of the SAE bundle shipped in the package for ``model_id``.

    ``variant`` names another bundle shipped for the same model, in a subfolder (the main
    bundle's checksum covers only its own files, so the two never mix): ``"compact"``
    (:data:`COMPACT_VARIANT`) for indexes that keep postings only.
    """
    folder = Path(__file__).resolve().parent.parent / "saes" / model_id
    return folder if variant is None else folder / variant
