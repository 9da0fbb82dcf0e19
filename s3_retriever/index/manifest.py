"""The schema of ``manifest.json``: what an index folder declares about itself.

Parsed by pydantic in strict mode, so a type, a range (a negative count, a 5,000-digit
integer), a NaN or a bad file entry is refused in one place, with the field named. The saved
settings inside it are checked by :mod:`s3_retriever.schema` (they are the retriever's config).
"""

from __future__ import annotations

import math
import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from s3_retriever.files.untrusted import HugeInt

MAX_COUNT = 2**53
"""Ceiling on any count an index declares (documents, positions, heads): far above any real
index, and small enough that no arithmetic on it overflows int64 or loses float precision."""
DTYPES = ("auto", "bfloat16", "float16", "float32", "float64")
"""Model precisions an index may name (what ``str(torch dtype)`` gives for each)."""
_DIGEST = re.compile(r"[0-9a-f]{64}")

Count = Annotated[int, Field(ge=0, le=MAX_COUNT)]
Head = tuple[Count, Count]
_STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class Manifest(BaseModel):
    """``manifest.json`` of an index folder: what built it and the sha256 of every file."""

    model_config = _STRICT

    format_version: Literal[1, 2]
    model_id: str
    model_fingerprint: str
    tokenizer_fingerprint: str
    sae_checksum: str
    dtype: Literal[DTYPES] = "auto"  # type: ignore[valid-type]
    config: dict[str, Any]
    heads: list[Head]
    fields: list[Head] | None = None
    n_documents: Count
    n_positions: Count
    files: dict[str, str]

    @field_validator("files")
    @classmethod
    def _plain_listed_files(cls, files: dict[str, str]) -> dict[str, str]:
        for name, digest in files.items():
            if not _DIGEST.fullmatch(digest):
                raise ValueError(f"manifest entry {name!r} has no sha256 digest")
            parts = name.split("/")
            if "\x00" in name or "\\" in name or os.path.isabs(name) or ".." in parts:
                raise ValueError(f"manifest entry {name!r} points outside the index folder")
            if any(part in ("", ".") for part in parts):
                raise ValueError(f"manifest entry {name!r} is not a plain relative path")
        return files


class SchemaError(ValueError):
    """A manifest or saved config does not fit the schema; the message names the field."""


def parse_manifest_fields(data: Any) -> Manifest:
    """The manifest checked against the schema (its ``config`` left as a dict).

    Raises:
        SchemaError: naming the first field that is missing, mistyped, out of range or NaN.
    """
    if not isinstance(data, dict):
        raise SchemaError(f"the manifest is {type(data).__name__}, expected an object")
    huge = huge_int({k: v for k, v in data.items() if k != "config"}, "")
    if huge is not None:
        raise SchemaError(f"manifest field {huge!r} is an integer beyond {MAX_COUNT}")
    try:
        # JSON mode, as for the settings: arrays stand for tuples.
        return Manifest.model_validate_json(to_json(data), strict=True)
    except ValidationError as exc:
        raise SchemaError(describe(exc, "manifest field")) from None


def huge_int(value: Any, where: str) -> str | None:
    """Where ``value`` holds an int of absolute value above :data:`MAX_COUNT`, or None."""
    too_big = isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_COUNT
    if too_big or isinstance(value, HugeInt):
        return where or "value"
    items = (
        value.items()
        if isinstance(value, dict)
        else enumerate(value)
        if isinstance(value, list)
        else ()
    )
    for key, item in items:
        found = huge_int(item, f"{where}.{key}" if where else str(key))
        if found is not None:
            return found
    return None


def to_json(data: Any) -> str:
    import json

    # NaN and infinity are written as the JSON extensions pydantic's parser then refuses.
    return json.dumps(data, allow_nan=True)


def describe(exc: ValidationError, what: str) -> str:
    error = exc.errors(include_url=False)[0]
    loc = error["loc"][1:] if what == "setting" else error["loc"]
    name = ".".join(str(part) for part in loc)
    value = error.get("input")
    if error["type"] == "missing":
        return f"{what} {name!r} is missing"
    if error["type"] == "value_error":
        # Our own validators already name the entry; pydantic prefixes "Value error, ".
        return str(error["msg"]).removeprefix("Value error, ")
    if error["type"].endswith("_type") or error["type"] in ("int_from_float", "bool_parsing"):
        return f"{what} {name!r} is {type(value).__name__} ({error['msg'].lower()})"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{what} {name!r} is {value} ({error['msg'].lower()})"
    return f"{what} {name!r}: {error['msg']}"
