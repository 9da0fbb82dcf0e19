"""LlamaIndex integration for s3-retriever: attention-based evidence retrieval."""

from llama_index.retrievers.s3.base import S3AttentionRetriever, hit_to_node, to_core_filters

__all__ = ["S3AttentionRetriever", "hit_to_node", "to_core_filters"]
