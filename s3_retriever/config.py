"""The retriever's full configuration: one typed record per component.

The saved manifest stores this record, so an index is always read back with the settings that
built it, and the CLI documents the same fields.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, is_dataclass
from typing import Any

from s3_retriever.index.bm25 import LexicalConfig
from s3_retriever.index.segment import SegmentConfig
from s3_retriever.model.scan import ScanConfig
from s3_retriever.search.fusion import HybridConfig
from s3_retriever.search.settings import ScoringConfig, SearchSettings
from s3_retriever.search.spans import SpanConfig


@dataclass(frozen=True)
class RetrieverConfig:
    """Every setting of an :class:`~s3_retriever.S3Retriever`."""

    scan: ScanConfig = field(default_factory=ScanConfig)
    """Chunking and batching of the model scan."""
    segment: SegmentConfig = field(default_factory=SegmentConfig)
    """How documents are cut into units (sentences and lines)."""
    scoring: ScoringConfig = field(default_factory=ScoringConfig)
    """Which scorer turns a question into position scores."""
    spans: SpanConfig = field(default_factory=SpanConfig)
    """Smoothing, peak picking and span growth."""
    hybrid: HybridConfig = field(default_factory=HybridConfig)
    """Fusion of S3 and BM25 under the budget."""
    lexical: LexicalConfig = field(default_factory=LexicalConfig)
    """BM25 parameters."""
    retrieval_heads: tuple[tuple[int, int], ...] | None = None
    """(layer, query head) pairs that score; ``None`` takes the SAE bundle's measured choice."""
    store_keys: bool = True
    """Keep int8 keys of the retrieval heads' KV heads (needed by the ``exact`` scorer)."""
    store_postings: bool = True
    """Keep SAE postings (needed by the ``aligned`` and ``coactivation`` scorers)."""
    query_template: str = "{question}"
    """How a question is written before the model reads it."""

    def __post_init__(self) -> None:
        if not self.store_keys and not self.store_postings:
            raise ValueError("store_keys and store_postings cannot both be False")
        if not isinstance(self.query_template, str) or "{question}" not in self.query_template:
            raise ValueError("query_template must be a str containing '{question}'")
        try:
            # Any other field ("{0}", "{name}", a stray brace) would fail on every query.
            self.query_template.format(question="")
        except (IndexError, KeyError, ValueError, AttributeError) as exc:
            raise ValueError(
                f"query_template {self.query_template!r} must hold no field but '{{question}}' "
                f"(double literal braces: '{{{{' and '}}}}'); formatting it failed: {exc!r}"
            ) from None

    @classmethod
    def compact(cls) -> RetrieverConfig:
        """Postings only, scored through the SAE (``aligned``): no stored keys.

        With the shipped compact SAEs (k = 4, pursuit-coded) the postings take about 10 bytes
        per token and indexed KV head, 12x less than the bf16 keys, and S3-Pure keeps ~95% of
        exact attention's evidence recall at 1,024 tokens (docs/sae.md).
        """
        return cls(store_keys=False, scoring=ScoringConfig(scorer="aligned"))

    def search_settings(self) -> SearchSettings:
        """The query-time settings: what :meth:`S3Retriever.retrieve` searches with by default."""
        return SearchSettings(
            scoring=self.scoring,
            spans=self.spans,
            hybrid=self.hybrid,
            query_template=self.query_template,
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> RetrieverConfig:
        """Inverse of :meth:`to_dict`; unknown keys are refused so typos do not pass silently."""
        kwargs: dict[str, Any] = {}
        known = {f.name: f for f in fields(cls)}
        for name, value in data.items():
            if name not in known:
                raise ValueError(f"unknown retriever setting {name!r}")
            default = getattr(cls(), name)
            if is_dataclass(default) and isinstance(value, dict):
                component: Any = type(default)
                kwargs[name] = component(**value)
            elif name == "retrieval_heads" and value is not None:
                kwargs[name] = tuple((int(a), int(b)) for a, b in value)
            else:
                kwargs[name] = value
        return cls(**kwargs)

    def replace(self, **changes: Any) -> RetrieverConfig:
        """A copy with some top-level fields changed."""
        data = {f.name: getattr(self, f.name) for f in fields(self)}
        data.update(changes)
        return RetrieverConfig(**data)
