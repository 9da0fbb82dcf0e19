"""Answering a question, one module a step (:mod:`.pipeline` runs them in order).

:mod:`.question` (question vectors), :mod:`.scoring` with :mod:`.scorers` (position scores;
kernels in :mod:`.exact`, :mod:`.clustered`, :mod:`.through_sae`, :mod:`.int8_dot`),
:mod:`.units` (unit scores), :mod:`.ranking` with :mod:`.fusion` (ranked groups), :mod:`.spans`
(growth and packing), :mod:`.hits` (the records returned), :mod:`.filters` and
:mod:`.settings` (what a call may change).
"""

from s3_retriever.search.filters import Filters
from s3_retriever.search.fusion import HybridConfig
from s3_retriever.search.hits import Hit
from s3_retriever.search.settings import (
    MODES,
    SCORERS,
    Mode,
    ScorerName,
    ScoringConfig,
    SearchSettings,
)
from s3_retriever.search.spans import SpanConfig

__all__ = [
    "MODES",
    "SCORERS",
    "Filters",
    "Hit",
    "HybridConfig",
    "Mode",
    "ScorerName",
    "ScoringConfig",
    "SearchSettings",
    "SpanConfig",
]
