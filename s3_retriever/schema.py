"""One schema for what an index folder declares about itself: its manifest and saved settings.

The manifest and the :class:`~s3_retriever.config.RetrieverConfig` inside it are parsed by
pydantic in strict mode, so a type (``store_keys: "no"``), a range (a negative count, a
5,000-digit integer), a NaN or an unknown setting is refused in one place, with the field named,
instead of by hand in every reader. The component configs keep their own ``__post_init__``
checks, which pydantic runs as it builds them.
"""

from __future__ import annotations

from typing import Any

from pydantic import (
    BaseModel,
    ConfigDict,
    TypeAdapter,
    ValidationError,
)

from s3_retriever.config import RetrieverConfig
from s3_retriever.index.manifest import (
    MAX_COUNT,
    Manifest,
    SchemaError,
    describe,
    huge_int,
    parse_manifest_fields,
    to_json,
)

__all__ = ["Manifest", "SchemaError", "parse_config", "parse_manifest"]


class _SavedConfig(BaseModel):
    """Wrapper whose config pydantic applies to the (stdlib) config dataclasses inside it."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="forbid")

    config: RetrieverConfig


_CONFIG = TypeAdapter(_SavedConfig)


def parse_manifest(data: Any) -> tuple[Manifest, RetrieverConfig]:
    """The manifest and the retriever settings it holds, both checked against the schema.

    Raises:
        SchemaError: naming the first field that is missing, mistyped, out of range or NaN.
    """
    manifest = parse_manifest_fields(data)
    try:
        config = parse_config(manifest.config)
    except SchemaError as exc:
        raise SchemaError(f"holds invalid settings: {exc}") from None
    return manifest, config


def parse_config(data: dict[str, Any]) -> RetrieverConfig:
    """A :class:`RetrieverConfig` from its saved dict (JSON types: lists stand for tuples)."""
    huge = huge_int(data, "")
    if huge is not None:
        raise SchemaError(f"setting {huge!r} is an integer beyond {MAX_COUNT}")
    try:
        # JSON mode: arrays are accepted for tuples, as json.load gives them, while strict mode
        # still refuses "no" for a bool or "12" for an int.
        return _CONFIG.validate_json(to_json({"config": data}), strict=True).config
    except ValidationError as exc:
        raise SchemaError(describe(exc, "setting")) from None
