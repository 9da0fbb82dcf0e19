"""Old import path of :mod:`s3_retriever.model.loading`, kept for code written against it."""

from s3_retriever.model.loading import (
    DEFAULT_MODEL_NAME,
    LoadedModel,
    attention_shape,
    decoder_layers,
    load_model,
)

__all__ = ["DEFAULT_MODEL_NAME", "LoadedModel", "attention_shape", "decoder_layers", "load_model"]
