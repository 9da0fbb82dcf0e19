"""Metadata filters, applied to documents before any ranking.

A filter is a mapping ``{key: value}`` (exact match) or ``{key: [v1, v2]}`` (any of the values).
All keys must match. The pseudo-key ``doc_id`` filters on document ids.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

Filters = Mapping[str, Any]


def _matches(value: Any, wanted: Any) -> bool:
    if isinstance(wanted, (list, tuple, set, frozenset)):
        return any(value == w for w in wanted)
    return bool(value == wanted)


def document_mask(
    metadatas: Sequence[Mapping[str, Any]], doc_ids: Sequence[str], filters: Filters | None
) -> np.ndarray:
    """Boolean mask over documents: True where every filter key matches."""
    if not filters:
        return np.ones(len(doc_ids), dtype=bool)
    if not isinstance(filters, Mapping):
        raise TypeError(
            "filters must be a mapping like {'source': 'a.txt'} or {'year': [2020, 2021]}"
        )
    if "doc_id" in filters:
        wanted_ids = filters["doc_id"]
        many = isinstance(wanted_ids, (list, tuple, set, frozenset))
        if not all(isinstance(w, str) for w in (wanted_ids if many else [wanted_ids])):
            # Ids are always str: 5 would match nothing, silently.
            raise TypeError(f"filters['doc_id'] must be a str or a list of str, got {wanted_ids!r}")
    mask = np.ones(len(doc_ids), dtype=bool)
    missing = object()
    for row, (meta, doc_id) in enumerate(zip(metadatas, doc_ids, strict=True)):
        for key, wanted in filters.items():
            value = doc_id if key == "doc_id" else meta.get(key, missing)
            if value is missing or not _matches(value, wanted):
                mask[row] = False
                break
    return mask
