"""LangChain integration for s3-retriever: attention-based evidence retrieval."""

from langchain_s3.retrievers import S3AttentionRetriever, hit_to_document

__all__ = ["S3AttentionRetriever", "hit_to_document"]
