"""The header of a saved retriever: how its index was built, and the checks when it is loaded.

:mod:`s3_retriever.index.storage` writes an :class:`~s3_retriever.index.index.Index` with the
header the facade hands it (model and tokenizer fingerprints, precision, SAE checksum, settings,
heads) and never looks inside it; this module builds that header and, on loading, refuses an
index whose model, tokenizer or SAEs differ from those that built it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from s3_retriever.config import RetrieverConfig
from s3_retriever.errors import IndexLoadError
from s3_retriever.index.postings import Field
from s3_retriever.index.storage import StoredIndex, read_index
from s3_retriever.model.loading import DEFAULT_MODEL_NAME, LoadedModel, load_model
from s3_retriever.sae.bundle import SAEBundle
from s3_retriever.schema import SchemaError, parse_config


def build_header(
    model: LoadedModel,
    bundle: SAEBundle,
    config: RetrieverConfig,
    heads: Sequence[tuple[int, int]],
    fields: Sequence[Field],
) -> dict[str, Any]:
    """The manifest fields that describe how an index was built."""
    return {
        "model_id": model.model_id,
        "model_fingerprint": model.fingerprint,
        "dtype": str(next(model.model.parameters()).dtype).removeprefix("torch."),
        "tokenizer_fingerprint": model.tokenizer_fingerprint,
        "sae_checksum": bundle.checksum,
        "config": config.to_dict(),
        "heads": [list(h) for h in heads],
        "fields": [list(f) for f in fields],
    }


def open_saved(
    path: Path,
    model_path: str | os.PathLike[str] | None = None,
    device: str = "cpu",
    dtype: str | None = None,
) -> tuple[StoredIndex, LoadedModel, RetrieverConfig]:
    """Read and verify a saved index, load its model, and check both belong together.

    Returns the stored index (documents, arrays, SAE bundle), the model and the settings.
    """
    stored = read_index(path)
    manifest = stored.manifest
    try:
        config = parse_config(manifest.config)
    except SchemaError as exc:
        raise IndexLoadError(
            f"{stored.folder}/manifest.json holds invalid settings: {exc}. Rebuild the index."
        ) from exc
    if model_path is None and manifest.model_id != DEFAULT_MODEL_NAME:
        raise IndexLoadError(
            f"This index was built with {manifest.model_id!r}; pass model_path= to load it."
        )
    # Question vectors must come from the same precision the keys were stored from.
    loaded = load_model(model_path, device=device, dtype=dtype or manifest.dtype)
    if loaded.fingerprint != manifest.model_fingerprint:
        raise IndexLoadError(
            f"Model mismatch: the index was built with {manifest.model_id!r} "
            f"(fingerprint {manifest.model_fingerprint[:12]}), but the model given is "
            f"{loaded.model_id!r} ({loaded.fingerprint[:12]}). Load it with the same model."
        )
    if loaded.tokenizer_fingerprint != manifest.tokenizer_fingerprint:
        raise IndexLoadError(
            "Tokenizer mismatch: the model's tokenizer differs from the one the index was built "
            "with, so token positions would not line up. Rebuild the index or use that tokenizer."
        )
    assert stored.bundle is not None
    if stored.bundle.checksum != manifest.sae_checksum:
        raise IndexLoadError(
            "SAE mismatch: the SAE bundle in the index does not match the checksum it was built "
            "with. Rebuild the index."
        )
    return stored, loaded, config


def check_heads_match(stored: StoredIndex, heads: Sequence[tuple[int, int]]) -> None:
    """Refuse an index whose saved retrieval heads differ from those the settings select."""
    if [list(h) for h in heads] != [list(h) for h in stored.manifest.heads]:
        raise IndexLoadError("The saved retrieval heads differ from those the config selects.")
