"""s3-retriever: long-document retrieval with a language model's own attention."""

from s3_retriever.config import RetrieverConfig
from s3_retriever.errors import IndexLoadError, ModelError, S3RetrieverError, SAEError
from s3_retriever.fusion import HybridConfig
from s3_retriever.lexical import LexicalConfig
from s3_retriever.relevance import FewerHitsWarning
from s3_retriever.retriever import Hit, S3Retriever
from s3_retriever.sae import SAEBundle, SAEConfig, TopKSAE
from s3_retriever.scan import ScanConfig
from s3_retriever.scoring import ScoringConfig
from s3_retriever.segment import SegmentConfig
from s3_retriever.spans import SpanConfig

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
    "SegmentConfig",
    "SpanConfig",
    "TopKSAE",
]

__version__ = "0.1.0"
