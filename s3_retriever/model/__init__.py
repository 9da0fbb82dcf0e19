"""The language model: loading and verifying it (:mod:`.loading`), and reading texts through it
(:mod:`.scan`: tokens with character offsets, chunked forward passes, pre-RoPE keys and queries)."""

from s3_retriever.model.loading import (
    DEFAULT_MODEL_NAME,
    LoadedModel,
    attention_shape,
    decoder_layers,
    load_model,
)
from s3_retriever.model.scan import ScanConfig, Scanner, TokenizedText, tokenize

__all__ = [
    "DEFAULT_MODEL_NAME",
    "LoadedModel",
    "ScanConfig",
    "Scanner",
    "TokenizedText",
    "attention_shape",
    "decoder_layers",
    "load_model",
    "tokenize",
]
