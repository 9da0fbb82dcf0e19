"""s3-retriever: long-document retrieval with a language model's own attention."""

from s3_retriever.config import RetrieverConfig
from s3_retriever.errors import IndexLoadError, ModelError, S3RetrieverError, SAEError
from s3_retriever.index.bm25 import LexicalConfig
from s3_retriever.index.segment import SegmentConfig
from s3_retriever.model.scan import ScanConfig
from s3_retriever.retriever import Hit, S3Retriever
from s3_retriever.sae.bundle import SAEBundle, SAEConfig, TopKSAE
from s3_retriever.search.fusion import HybridConfig
from s3_retriever.search.relevance import FewerHitsWarning
from s3_retriever.search.settings import ScoringConfig, SearchSettings
from s3_retriever.search.spans import SpanConfig

__all__ = [
    "FewerHitsWarning",
    "Hit",
    "HybridConfig",
    "IndexLoadError",
    "LexicalConfig",
    "ModelError",
    "RetrieverConfig",
    "S3Retriever",
    "S3RetrieverError",
    "SAEBundle",
    "SAEConfig",
    "SAEError",
    "ScanConfig",
    "ScoringConfig",
    "SearchSettings",
    "SegmentConfig",
    "SpanConfig",
    "TopKSAE",
]

__version__ = "0.1.0"
