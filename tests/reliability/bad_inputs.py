"""Crafted index and SAE folders that must be refused at load, each with the error it must give.

Used by tests/reliability/test_validation.py (one test per case), and runnable on its own for
the count in docs/reliability.md::

    python -m tests.reliability.bad_inputs

Each case changes one thing in a copy of a valid folder (checksums refreshed, so only the check
under test can catch it) and names the error class and the words the message must hold.
"""

from __future__ import annotations

import json
import shutil
import struct
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from s3_retriever.files.hashing import sha256_file


def rewrite_manifest(index: Path, change: Callable[[dict[str, Any]], Any]) -> None:
    manifest = json.loads((index / "manifest.json").read_text())
    change(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest))


def refresh_checksum(index: Path, name: str) -> None:
    rewrite_manifest(index, lambda m: m["files"].__setitem__(name, sha256_file(index / name)))


def _manifest_text(index: Path, old: str, new: str) -> None:
    path = index / "manifest.json"
    text = path.read_text()
    assert old in text, old
    path.write_text(text.replace(old, new, 1))


def _retype(name: str, dtype: str) -> Callable[[Path], None]:
    def change(index: Path) -> None:
        array = np.load(index / name)
        np.save(index / name, array.astype(dtype), allow_pickle=False)
        refresh_checksum(index, name)

    return change


def _setting(section: str | None, key: str, value: Any) -> Callable[[Path], None]:
    def change(index: Path) -> None:
        def edit(m: dict[str, Any]) -> None:
            target = m["config"] if section is None else m["config"][section]
            target[key] = value

        rewrite_manifest(index, edit)

    return change


def _sae_tensors(file: str, change: Callable[[dict[str, torch.Tensor]], None]) -> Any:
    def apply(index: Path) -> None:
        path = index / "sae" / file
        tensors = load_file(str(path)) if path.is_file() else {}
        change(tensors)
        save_file(tensors, str(path))
        _resum_sae(index)

    return apply


def _resum_sae(index: Path) -> None:
    """Refresh the SAE files' checksums and the bundle checksum the manifest holds."""
    from s3_retriever.sae.bundle import bundle_checksum

    def edit(m: dict[str, Any]) -> None:
        for path in (index / "sae").iterdir():
            m["files"][f"sae/{path.name}"] = sha256_file(path)
        m["sae_checksum"] = bundle_checksum(index / "sae")

    rewrite_manifest(index, edit)


def _sae_config(change: Callable[[dict[str, Any]], None]) -> Callable[[Path], None]:
    def apply(index: Path) -> None:
        path = index / "sae" / "config.json"
        config = json.loads(path.read_text())
        change(config)
        path.write_text(json.dumps(config))
        _resum_sae(index)

    return apply


def _negative_layer(config: dict[str, Any]) -> None:
    config["layers"]["-1"] = config["layers"].pop(next(iter(config["layers"])))


def _huge_header(index: Path) -> None:
    path = index / "sae" / "query_means.safetensors"
    data = path.read_bytes()
    path.write_bytes(struct.pack("<Q", 2**62) + data[8:])
    _resum_sae(index)


def _nan_weight(tensors: dict[str, torch.Tensor]) -> None:
    tensors["W_enc"][0, 0] = float("nan")


def _inf_mean(tensors: dict[str, torch.Tensor]) -> None:
    name = next(iter(tensors))
    tensors[name][0, 0] = float("inf")


def _wrong_key_map(tensors: dict[str, torch.Tensor]) -> None:
    tensors["layer_01"] = torch.eye(3)


@dataclass(frozen=True)
class BadInput:
    """One crafted change and what loading it must raise."""

    name: str
    change: Callable[[Path], None]
    error: str
    """``IndexLoadError`` or ``SAEError``."""
    match: str
    """Words the message must hold (a regular expression), naming the field or problem."""


CASES: tuple[BadInput, ...] = (
    BadInput(
        "query_template with a positional field",
        _setting(None, "query_template", "{question}{0}"),
        "IndexLoadError",
        "query_template",
    ),
    BadInput(
        "query_template with another named field",
        _setting(None, "query_template", "{question} {context}"),
        "IndexLoadError",
        "query_template",
    ),
    BadInput(
        "store_keys a string",
        _setting(None, "store_keys", "no"),
        "IndexLoadError",
        "'store_keys' is str",
    ),
    BadInput(
        "temperature NaN",
        _setting("scoring", "temperature", float("nan")),
        "IndexLoadError",
        "scoring.temperature",
    ),
    BadInput(
        "temperature infinite",
        _setting("scoring", "temperature", float("inf")),
        "IndexLoadError",
        "scoring.temperature",
    ),
    BadInput(
        "chunk_size of 10^30",
        _setting("scan", "chunk_size", 10**30),
        "IndexLoadError",
        "scan.chunk_size",
    ),
    BadInput(
        "smooth_width a float",
        _setting("spans", "smooth_width", 15.0),
        "IndexLoadError",
        "spans.smooth_width",
    ),
    BadInput(
        "5,000-digit n_positions",
        lambda i: _manifest_text(
            i, '"n_positions": ', '"n_positions": ' + "9" * 5000 + ', "_was": '
        ),
        "IndexLoadError",
        "'n_positions'",
    ),
    BadInput(
        "n_documents negative",
        lambda i: rewrite_manifest(i, lambda m: m.__setitem__("n_documents", -1)),
        "IndexLoadError",
        "n_documents",
    ),
    BadInput(
        "dtype a number",
        lambda i: rewrite_manifest(i, lambda m: m.__setitem__("dtype", 5)),
        "IndexLoadError",
        "'dtype'",
    ),
    BadInput(
        "dtype an unknown precision",
        lambda i: rewrite_manifest(i, lambda m: m.__setitem__("dtype", "int4")),
        "IndexLoadError",
        "'dtype'",
    ),
    BadInput(
        "heads holding a string",
        lambda i: rewrite_manifest(i, lambda m: m.__setitem__("heads", [["1", 0]])),
        "IndexLoadError",
        "heads",
    ),
    BadInput(
        "corpus table as float64",
        _retype("corpus/unit_doc.npy", "float64"),
        "IndexLoadError",
        r"unit_doc\.npy holds float64",
    ),
    BadInput(
        "corpus offsets as float32",
        _retype("corpus/unit_chars.npy", "float32"),
        "IndexLoadError",
        r"unit_chars\.npy holds float32",
    ),
    BadInput(
        "token counts as unsigned",
        _retype("corpus/doc_token_count.npy", "uint64"),
        "IndexLoadError",
        r"doc_token_count\.npy holds uint64",
    ),
    BadInput(
        "key codes as float32",
        _retype("keys/L1_H0_codes.npy", "float32"),
        "IndexLoadError",
        r"L1_H0_codes\.npy holds float32",
    ),
    BadInput(
        "key codes as int16",
        _retype("keys/L1_H0_codes.npy", "int16"),
        "IndexLoadError",
        "keys have the wrong shape or type",
    ),
    BadInput(
        "key scales as int32",
        _retype("keys/L1_H0_scales.npy", "int32"),
        "IndexLoadError",
        r"L1_H0_scales\.npy holds int32",
    ),
    BadInput(
        "NaN SAE weight",
        _sae_tensors("layer_01.safetensors", _nan_weight),
        "SAEError",
        "NaN or infinite",
    ),
    BadInput(
        "infinite query mean",
        _sae_tensors("query_means.safetensors", _inf_mean),
        "SAEError",
        "NaN or infinite",
    ),
    BadInput(
        "key map of the wrong shape",
        _sae_tensors("key_maps.safetensors", _wrong_key_map),
        "SAEError",
        "key_maps",
    ),
    BadInput("negative SAE layer", _sae_config(_negative_layer), "SAEError", "layer -1"),
    BadInput("2^62-byte query_means header", _huge_header, "SAEError", "query_means"),
)


def try_case(case: BadInput, saved: Path, workdir: Path, model: Path) -> str | None:
    """Apply ``case`` to a copy of the index ``saved``; None if loading refused it as required,
    else what happened instead."""
    from s3_retriever import S3Retriever, errors

    copy = workdir / "case"
    shutil.rmtree(copy, ignore_errors=True)
    shutil.copytree(saved, copy)
    case.change(copy)
    expected = getattr(errors, case.error)
    try:
        S3Retriever.load(copy, model_path=model)
    except expected as exc:
        import re

        return None if re.search(case.match, str(exc)) else f"message was: {exc}"
    except Exception as exc:  # noqa: BLE001 - reported as the wrong outcome
        return f"raised {type(exc).__name__}: {exc}"
    return "loaded without error"


def _main() -> None:
    from s3_retriever.testing import tiny_retriever

    with tempfile.TemporaryDirectory() as tmp:
        workdir = Path(tmp)
        retriever = tiny_retriever(workdir)
        retriever.add_documents(["A train leaves at seven.", "The budget adds beds."])
        saved = workdir / "index"
        retriever.save(saved)
        model = workdir / "tiny-llama"
        failed = 0
        for case in CASES:
            problem = try_case(case, saved, workdir, model)
            failed += problem is not None
            print(f"{'ok  ' if problem is None else 'FAIL'} {case.name}: {problem or case.match}")
    print(f"{len(CASES)} crafted inputs tried, {len(CASES) - failed} refused with the named error")
    sys.exit(1 if failed else 0)


if __name__ == "__main__":
    _main()
