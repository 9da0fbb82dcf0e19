"""Runs the LlamaIndex query engine example in smoke mode with the bundled model."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

EXAMPLE = Path(__file__).resolve().parents[3] / "docs" / "examples" / "llamaindex_query_engine.py"

pytestmark = pytest.mark.model


def _load_example() -> ModuleType:
    if not EXAMPLE.is_file():
        pytest.skip(f"example not found at {EXAMPLE} (run from a source checkout)")
    spec = importlib.util.spec_from_file_location("llamaindex_query_engine_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_llamaindex_query_engine_smoke(
    pretrained_kwargs: dict[str, Any], capsys: pytest.CaptureFixture[str]
) -> None:
    example = _load_example()
    argv = ["--smoke", "--k", "2"]
    if "sae_path" in pretrained_kwargs:
        argv += ["--sae-path", str(pretrained_kwargs["sae_path"])]
    result = example.main(argv)
    printed = capsys.readouterr().out
    assert isinstance(result["answer"], str)
    assert len(result["sources"]) == 2
    assert f"Answer: {result['answer']}" in printed
    for source in result["sources"]:
        assert repr(source.node.get_content()) in printed
