"""Fuzzing of the command line's input path and of the index/SAE file parsers (hypothesis).

Each target runs a fixed number of random examples, a few seconds each in CI. For a longer run:
``S3_RETRIEVER_FUZZ_SCALE=50 pytest tests/reliability/test_fuzz.py``. The contract: any input
ends in success or in the package's own error with a message; never another exception.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from s3_retriever import IndexLoadError, S3Retriever
from s3_retriever.cli import main
from s3_retriever.files.untrusted import UntrustedFileError, npy_header, safetensors_shapes
from s3_retriever.index.storage import read_manifest
from tests.conftest import RetrieverFactory

SCALE = int(os.environ.get("S3_RETRIEVER_FUZZ_SCALE", "1"))


def fuzz(examples: int) -> Any:
    return settings(
        max_examples=examples * SCALE,
        deadline=None,
        database=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
    )


JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner, max_size=4)
    ),
    max_leaves=20,
)


def _error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.strip()]


# ------------------------------------------------------------------------------- CLI


@pytest.fixture()
def tiny_cli(monkeypatch: pytest.MonkeyPatch, make_retriever: RetrieverFactory) -> Any:
    """from_pretrained and load give the tiny retriever; load gives one holding two documents."""
    indexed = make_retriever()
    indexed.add_documents(
        ["The train leaves at seven.", "東京は日本の首都です。😀"], ids=["a.txt", "b.txt"]
    )
    monkeypatch.setattr(
        S3Retriever, "from_pretrained", classmethod(lambda c, *a, **k: make_retriever())
    )
    monkeypatch.setattr(S3Retriever, "load", classmethod(lambda c, *a, **k: indexed))
    monkeypatch.setattr(S3Retriever, "save", lambda self, path: None)
    return indexed


@fuzz(25)
@given(contents=st.lists(st.binary(max_size=300), min_size=1, max_size=3))
@example(contents=[b"\xff\xfe\x00bad", b"ok text"])
@example(contents=[b"\xed\xa0\x80 encoded surrogate"])
@example(contents=[b""])
def test_cli_index_of_random_bytes(
    tiny_cli: Any, capsys: pytest.CaptureFixture[str], contents: list[bytes]
) -> None:
    """Random file bytes: indexed (status 0) when valid UTF-8 and some file holds text; else one
    error line (status 2): not UTF-8, or nothing to index."""
    capsys.readouterr()
    with tempfile.TemporaryDirectory() as tmp:
        paths = []
        for i, data in enumerate(contents):
            path = Path(tmp) / f"f{i}.txt"
            path.write_bytes(data)
            paths.append(str(path))
        status = main(["index", *paths, "--out", str(Path(tmp) / "index")])
    out = capsys.readouterr()
    valid = all(_is_utf8(data) for data in contents)
    empty = all(not data.strip() for data in contents)
    if valid and not empty:
        assert status == 0, out.err
    else:
        assert status == 2
        lines = _error_lines(out.err)
        assert len(lines) == 1
        assert ("nothing to index" if empty else "not valid UTF-8") in lines[0]


def _is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@fuzz(60)
@given(
    question=st.binary(max_size=80).map(lambda b: b.decode("utf-8", errors="surrogateescape")),
    options=st.lists(
        st.sampled_from(
            ["--budget", "--top-k", "--mode", "--json", "0", "-3", "7", "1e3", "s3", "bm25", "x"]
        ),
        max_size=4,
    ),
)
@example(question="caf\udce9", options=[])
@example(question="train", options=["--budget", "0"])
@example(question="train", options=["--top-k", "-1"])
@example(question="-\udc80", options=[])
def test_cli_query_of_random_arguments(
    tiny_cli: Any, capsys: pytest.CaptureFixture[str], question: str, options: list[str]
) -> None:
    """Any question (invalid UTF-8 arrives as surrogates) and any options: status 0, or one
    error line (status 2), or argparse's usage error (status 2). Never a traceback."""
    capsys.readouterr()  # drop what earlier examples printed
    try:
        status = main(["query", "index-dir", question, *options])
    except SystemExit as exc:  # argparse rejects malformed options with its usage message
        assert exc.code == 2
        return
    err = capsys.readouterr().err
    assert "Traceback" not in err
    if status != 0:
        assert status == 2
        lines = _error_lines(err)
        assert len(lines) == 1 and lines[0].startswith("s3-retriever: error:")


# ------------------------------------------------------------------------------- parsers


@pytest.fixture(scope="module")
def index_folder(
    tmp_path_factory: pytest.TempPathFactory, indexed: S3Retriever
) -> tuple[Path, dict[str, Any]]:
    """A saved index whose manifest each example overwrites, and the valid manifest."""
    path = tmp_path_factory.mktemp("fuzz") / "index"
    indexed.save(path)
    return path, json.loads((path / "manifest.json").read_text())


def _manifest_variants(valid: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Random JSON, and the valid manifest with one field replaced by random JSON."""
    mutated = st.tuples(st.sampled_from(sorted(valid)), JSON).map(
        lambda kv: {**valid, kv[0]: kv[1]}
    )
    files = st.dictionaries(st.text(max_size=30), JSON, max_size=3).map(
        lambda extra: {**valid, "files": {**valid["files"], **extra}}
    )
    return JSON | mutated | files


@fuzz(150)
@given(data=st.data())
def test_manifest_parser(index_folder: tuple[Path, dict[str, Any]], data: st.DataObject) -> None:
    """read_manifest on random bytes, random JSON or a valid manifest with one field replaced
    by random JSON: accepted, or IndexLoadError."""
    folder, valid = index_folder
    candidate = data.draw(_manifest_variants(valid) | st.binary(max_size=200))
    raw = candidate if isinstance(candidate, bytes) else json.dumps(candidate).encode()
    (folder / "manifest.json").write_bytes(raw)
    try:
        read_manifest(folder)
    except IndexLoadError:
        return
    assert json.loads(raw)["files"] == valid["files"]


@fuzz(200)
@given(data=st.binary(max_size=300))
@example(data=b"\x93NUMPY\x01\x00\x10\x00{'descr': '<i8'}   \n")
@example(
    data=b"\x93NUMPY\x01\x00"
    + b"\x76\x00"
    + b"{'descr': '<i8', 'fortran_order': False, 'shape': (9999999999999,), }"
    + b" " * 48
    + b"\n"
)
def test_npy_header_parser(data: bytes) -> None:
    """Random bytes as a .npy file: a checked (shape, dtype) whose size matches, or refused."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.npy"
        path.write_bytes(data)
        try:
            shape, dtype = npy_header(path)
        except UntrustedFileError:
            return
        import numpy as np

        array = np.load(path, allow_pickle=False)
        assert array.shape == shape and array.dtype == dtype


@fuzz(200)
@given(data=st.binary(max_size=300) | JSON.map(lambda j: _safetensors_bytes(j)))
def test_safetensors_header_parser(data: bytes) -> None:
    """Random bytes or random JSON headers as safetensors: shapes returned, or refused."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.safetensors"
        path.write_bytes(data)
        with contextlib.suppress(UntrustedFileError):
            safetensors_shapes(path)


def _safetensors_bytes(header: Any) -> bytes:
    encoded = json.dumps(header).encode()
    return len(encoded).to_bytes(8, "little") + encoded + b"\x00" * 32
