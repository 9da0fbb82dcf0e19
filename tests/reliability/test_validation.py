"""Values s3-retriever used to accept and trip over later: saved settings, array types, SAE
weights, metadata, ids, and the error classes every refusal belongs to."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from s3_retriever import IndexLoadError, S3Retriever, SAEBundle, SAEError
from s3_retriever.bulk import SourceError
from s3_retriever.cli import CLIError
from s3_retriever.errors import IndexBusyError, S3RetrieverError, SaveTargetError
from s3_retriever.files.untrusted import UntrustedFileError
from tests.conftest import RetrieverFactory
from tests.reliability.bad_inputs import CASES, BadInput, try_case


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_crafted_index_is_refused_naming_the_field(
    case: BadInput, saved: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Each crafted change (tests/reliability/bad_inputs.py) is refused at load with the error
    class and the field or problem it names; these used to load, or to fail later with raw
    IndexError, TypeError, ValueError, torch or safetensors errors."""
    assert try_case(case, saved, tmp_path, model_dir) is None


def test_sae_bundle_with_nan_weights_is_refused_before_scanning(
    bundle_dir: Path, model_dir: Path, tmp_path: Path
) -> None:
    """A bundle folder given to from_pretrained is checked at load, before any document is
    scanned: NaN weights used to make every score NaN."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "sae"
    shutil.copytree(bundle_dir, copy)
    layer_file = sorted(copy.glob("layer_*.safetensors"))[0]
    tensors = load_file(str(layer_file))
    tensors["b_dec"][0] = float("nan")
    save_file(tensors, str(layer_file))
    with pytest.raises(SAEError, match="NaN or infinite"):
        SAEBundle.load(copy)
    with pytest.raises(SAEError, match="NaN or infinite"):
        S3Retriever.from_pretrained(model_dir, sae_path=copy)


def test_metadata_with_lone_surrogates_is_refused_and_copies_are_kept(
    make_retriever: RetrieverFactory, tmp_path: Path
) -> None:
    """A lone surrogate in metadata used to be accepted, then made every later save fail; nested
    metadata was shared with the caller and with hit.metadata."""
    retriever = make_retriever()
    with pytest.raises(ValueError, match="unpaired surrogate"):
        retriever.add_documents(["The train leaves."], metadatas=[{"tags": ["ok", "\udcff"]}])
    assert len(retriever) == 0
    meta = {"tags": ["rail"], "where": {"city": "Bern"}}
    retriever.add_documents(["The train leaves at seven."], ids=["t"], metadatas=[meta])
    meta["tags"].append("changed by the caller")
    meta["where"]["city"] = "changed"
    hit = retriever.retrieve("train", mode="bm25")[0]
    assert hit.metadata == {"tags": ["rail"], "where": {"city": "Bern"}}
    hit.metadata["tags"].append("changed through a hit")
    assert retriever.retrieve("train", mode="bm25")[0].metadata["tags"] == ["rail"]
    retriever.save(tmp_path / "index")  # still saves
    documents = json.loads((tmp_path / "index" / "documents.json").read_text())
    assert documents["metadatas"] == [{"tags": ["rail"], "where": {"city": "Bern"}}]


@pytest.mark.parametrize("bad_id", [5, 1.0, b"x", ["q"]])
def test_non_str_ids_are_a_type_error(make_retriever: RetrieverFactory, bad_id: object) -> None:
    """Ids that are not str used to become strings silently, and then delete([5]) and
    filters={"doc_id": 5} matched nothing."""
    retriever = make_retriever()
    with pytest.raises(TypeError, match="ids must be str"):
        retriever.add_documents(["A text."], ids=[bad_id])  # type: ignore[list-item]
    assert len(retriever) == 0
    retriever.add_documents(["A text about trains."], ids=["5"])
    with pytest.raises(TypeError, match="ids must be str"):
        retriever.delete([bad_id])  # type: ignore[list-item]
    with pytest.raises(TypeError, match="doc_id"):
        retriever.retrieve("trains", mode="bm25", filters={"doc_id": [bad_id]})
    assert retriever.doc_ids == ["5"]


def test_every_refusal_is_a_package_error() -> None:
    """One except S3RetrieverError catches every refusal; loader and input errors are also
    ValueError, so handlers written for it keep working."""
    for error in (UntrustedFileError, SourceError, CLIError, IndexLoadError, SAEError):
        assert issubclass(error, S3RetrieverError), error
    for error in (SaveTargetError, IndexBusyError):
        assert issubclass(error, S3RetrieverError), error
    for error in (IndexLoadError, UntrustedFileError, SourceError, SaveTargetError):
        assert issubclass(error, ValueError), error
