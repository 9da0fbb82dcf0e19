"""LlamaIndex integration for s3-retriever: attention-based evidence retrieval."""

from llama_index.retrievers.s3.base import S3AttentionRetriever, hit_to_node, link_neighbours
from llama_index.retrievers.s3.filters import to_core_filters
from llama_index.retrievers.s3.postprocessors import SourceDocuments

__all__ = [
    "S3AttentionRetriever",
    "SourceDocuments",
    "hit_to_node",
    "link_neighbours",
    "to_core_filters",
]
