"""Saving and loading indexes: fidelity, atomic replacement, and refusal of bad folders."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s3_retriever import IndexLoadError, S3Retriever, ScoringConfig
from s3_retriever.files.hashing import sha256_file
from s3_retriever.index.clusters import cluster_count, key_clusters
from s3_retriever.retriever import Mode
from s3_retriever.search.scoring import ScorerName
from tests.conftest import one_thread, tiny_config

MODES: tuple[Mode, ...] = ("hybrid", "s3", "bm25")
QUESTIONS = (
    "When does the train leave the mountain station?",
    "How many nurses will the hospital hire?",
    "東京 office 😀",
)


def _build(
    model_dir: Path, bundle_dir: Path, corpus: dict[str, str], meta: dict[str, Any], **config: Any
) -> S3Retriever:
    """A retriever built the way users build one: from_pretrained with the default dtype."""
    retriever = S3Retriever.from_pretrained(
        model_dir, sae_path=bundle_dir, config=tiny_config(**config)
    )
    order = list(corpus)
    retriever.add_documents(
        [corpus[i] for i in order], ids=order, metadatas=[meta[i] for i in order]
    )
    return retriever


def _results(retriever: S3Retriever) -> list[Any]:
    return [
        retriever.retrieve(q, token_budget=b, mode=m)
        for q in QUESTIONS
        for m in MODES
        for b in (30, 200)
    ]


@pytest.fixture(scope="module")
def built(
    model_dir: Path, bundle_dir: Path, corpus: dict[str, str], corpus_metadata: dict[str, Any]
) -> S3Retriever:
    with one_thread():
        return _build(model_dir, bundle_dir, corpus, corpus_metadata)


@pytest.fixture()
def saved(built: S3Retriever, tmp_path: Path) -> Path:
    path = tmp_path / "index"
    built.save(path)
    return path


def _rewrite_manifest(index: Path, change: Any) -> None:
    manifest = json.loads((index / "manifest.json").read_text())
    change(manifest)
    (index / "manifest.json").write_text(json.dumps(manifest))


def _refresh_checksum(index: Path, name: str) -> None:
    _rewrite_manifest(index, lambda m: m["files"].__setitem__(name, sha256_file(index / name)))


# ---------------------------------------------------------------------------------- fidelity


@pytest.mark.parametrize("scorer", ["exact", "aligned", "coactivation"])
def test_round_trip_gives_identical_results(
    model_dir: Path,
    bundle_dir: Path,
    corpus: dict[str, str],
    corpus_metadata: dict[str, Any],
    tmp_path: Path,
    scorer: ScorerName,
) -> None:
    """save() then load() returns the same hits, scores, documents and settings in every mode."""
    original = _build(
        model_dir, bundle_dir, corpus, corpus_metadata, scoring=ScoringConfig(scorer=scorer)
    )
    original.save(tmp_path / "index")
    restored = S3Retriever.load(tmp_path / "index", model_path=model_dir)
    assert restored.config == original.config
    assert restored.heads == original.heads
    assert restored.doc_ids == original.doc_ids
    assert restored.index.corpus.texts == original.index.corpus.texts
    assert restored.index.corpus.metadatas == original.index.corpus.metadatas
    assert restored.bundle.checksum == original.bundle.checksum
    assert _results(restored) == _results(original)
    assert restored.index.nbytes() == original.index.nbytes()


def test_round_trip_keeps_model_dtype(
    indexed: S3Retriever, model_dir: Path, tmp_path: Path
) -> None:
    """An index built with a float32 model answers identically after save/load."""
    indexed.save(tmp_path / "index")
    restored = S3Retriever.load(tmp_path / "index", model_path=model_dir)
    assert restored.model.model.dtype == indexed.model.model.dtype
    assert _results(restored) == _results(indexed)


def test_loaded_index_accepts_updates(
    built: S3Retriever,
    saved: Path,
    model_dir: Path,
    bundle_dir: Path,
    corpus: dict[str, str],
    corpus_metadata: dict[str, Any],
) -> None:
    """A loaded index can delete and add documents like one built in memory."""
    restored = S3Retriever.load(saved, model_path=model_dir)
    restored.delete(["rivers"])
    restored.add_documents(
        [corpus["rivers"]], ids=["rivers"], metadatas=[corpus_metadata["rivers"]]
    )
    order = [d for d in corpus if d != "rivers"] + ["rivers"]
    reference = _build(model_dir, bundle_dir, {d: corpus[d] for d in order}, corpus_metadata)
    assert restored.doc_ids == reference.doc_ids
    for question in QUESTIONS:
        np.testing.assert_allclose(
            restored.score_positions(question),
            reference.score_positions(question),
            rtol=1e-3,
            atol=1e-6,
        )


def test_saving_over_an_index_replaces_it(
    built: S3Retriever, model_dir: Path, bundle_dir: Path, corpus: dict[str, str], tmp_path: Path
) -> None:
    """A second save to the same path replaces the first index and leaves no staging folders."""
    path = tmp_path / "index"
    built.save(path)
    other = S3Retriever.from_pretrained(model_dir, sae_path=bundle_dir, config=tiny_config())
    other.add_documents([corpus["trains"]], ids=["only"])
    other.save(path)
    restored = S3Retriever.load(path, model_path=model_dir)
    assert restored.doc_ids == ["only"]
    assert restored.index.corpus.n_positions == other.index.corpus.n_positions
    assert sorted(p.name for p in tmp_path.iterdir()) == ["index"]
    assert _results(restored) == _results(other)


def test_load_falls_back_to_crash_backup(built: S3Retriever, saved: Path, model_dir: Path) -> None:
    """If a crash left only the backup of an index, load() reads the backup."""
    saved.rename(saved.with_name(f".{saved.name}.old-12345"))
    restored = S3Retriever.load(saved, model_path=model_dir)
    assert restored.doc_ids == built.doc_ids


def test_no_pickle_files_are_written(saved: Path) -> None:
    """Every .npy in the index loads with allow_pickle=False; the rest is JSON or safetensors."""
    suffixes = {p.suffix for p in saved.rglob("*") if p.is_file()}
    assert suffixes <= {".npy", ".json", ".safetensors"}
    for path in saved.rglob("*.npy"):
        array = np.load(path, allow_pickle=False)
        assert array.dtype != object


# ---------------------------------------------------------------------------------- refusals


def test_missing_index_is_refused(tmp_path: Path, model_dir: Path) -> None:
    """A folder without manifest.json raises IndexLoadError."""
    with pytest.raises(IndexLoadError, match="manifest.json"):
        S3Retriever.load(tmp_path / "nowhere", model_path=model_dir)


def test_model_path_is_required_for_other_models(saved: Path) -> None:
    """An index built with a non-default model cannot be loaded without model_path."""
    with pytest.raises(IndexLoadError, match="model_path"):
        S3Retriever.load(saved)


def test_large_arrays_are_memory_mapped(saved: Path, model_dir: Path) -> None:
    """Keys and postings are mapped from disk, not read into memory, and still search."""
    restored = S3Retriever.load(saved, model_path=model_dir)
    for store in restored.index.key_stores.values():
        assert isinstance(store.codes, np.memmap)
    for postings in restored.index.postings.values():
        assert isinstance(postings.position_bytes, np.memmap)
    assert restored.retrieve(QUESTIONS[0], token_budget=30, mode="s3")


def _downgrade_to_format_1(index: Path, built: S3Retriever) -> None:
    """Rewrite an index's postings the way format 1 stored them (int32 + float16 lists)."""
    manifest = json.loads((index / "manifest.json").read_text())
    for (layer, kv), postings in built.index.postings.items():
        stem = f"postings/L{layer}_H{kv}"
        for part in ("byteptr", "position_bytes", "activation_codes"):
            (index / f"{stem}_{part}.npy").unlink()
            del manifest["files"][f"{stem}_{part}.npy"]
        positions, acts = postings.decode()
        np.save(index / f"{stem}_positions.npy", positions.astype(np.int32))
        np.save(index / f"{stem}_activations.npy", acts.astype(np.float16))
        for part in ("indptr", "positions", "activations"):
            manifest["files"][f"{stem}_{part}.npy"] = sha256_file(index / f"{stem}_{part}.npy")
    manifest["format_version"] = 1
    (index / "manifest.json").write_text(json.dumps(manifest))


def test_format_1_index_is_read(saved: Path, built: S3Retriever, model_dir: Path) -> None:
    """An index saved before compact postings loads, with the same postings positions."""
    _downgrade_to_format_1(saved, built)
    restored = S3Retriever.load(saved, model_path=model_dir)
    for field_key, postings in restored.index.postings.items():
        want_pos, want_act = built.index.postings[field_key].decode()
        got_pos, got_act = postings.decode()
        assert np.array_equal(got_pos, want_pos)
        np.testing.assert_array_equal(got_act, want_act)  # codes survive float16 exactly
    assert _results(restored)[:4] == _results(built)[:4]  # exact scorer: keys unchanged


@pytest.mark.parametrize(
    "name",
    [
        "keys/L1_H0_codes.npy",
        "postings/L2_H1_position_bytes.npy",
        "postings/L1_H0_activation_codes.npy",
        "corpus/unit_chars.npy",
        "documents.json",
    ],
)
def test_damaged_file_is_refused(saved: Path, model_dir: Path, name: str) -> None:
    """Flipping one byte of any file is detected and the message names the file."""
    path = saved / name
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x40
    path.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=name.replace(".", r"\.")):
        S3Retriever.load(saved, model_path=model_dir)


def test_missing_file_is_refused(saved: Path, model_dir: Path) -> None:
    """A file listed in the manifest but absent is refused, naming the file."""
    (saved / "keys" / "L2_H1_scales.npy").unlink()
    with pytest.raises(IndexLoadError, match=r"L2_H1_scales\.npy"):
        S3Retriever.load(saved, model_path=model_dir)


def test_bad_manifest_is_refused(saved: Path, model_dir: Path) -> None:
    """Invalid JSON, another format version and a manifest without files are refused."""
    manifest = saved / "manifest.json"
    original = manifest.read_text()
    manifest.write_text("{not json")
    with pytest.raises(IndexLoadError, match="JSON"):
        S3Retriever.load(saved, model_path=model_dir)
    manifest.write_text(original.replace('"format_version": 2', '"format_version": 99'))
    with pytest.raises(IndexLoadError, match="format"):
        S3Retriever.load(saved, model_path=model_dir)
    data = json.loads(original)
    del data["files"]
    manifest.write_text(json.dumps(data))
    with pytest.raises(IndexLoadError, match="files"):
        S3Retriever.load(saved, model_path=model_dir)


@pytest.mark.parametrize(
    "entry", ["../x", "../../x", "/etc/hostname", "keys/../../x", "keys/../../index/../x"]
)
def test_manifest_path_outside_folder_is_refused(saved: Path, model_dir: Path, entry: str) -> None:
    """Manifest entries that resolve outside the index folder are refused, even if they exist."""
    (saved.parent / "x").write_text("x")
    _rewrite_manifest(saved, lambda m: m["files"].__setitem__(entry, "0" * 64))
    with pytest.raises(IndexLoadError, match="outside"):
        S3Retriever.load(saved, model_path=model_dir)


def test_symlink_out_of_the_folder_is_refused(saved: Path, model_dir: Path, tmp_path: Path) -> None:
    """A listed file replaced by a symlink to an identical file elsewhere is refused."""
    target = tmp_path / "elsewhere.json"
    shutil.copy(saved / "documents.json", target)
    (saved / "documents.json").unlink()
    (saved / "documents.json").symlink_to(target)
    with pytest.raises(IndexLoadError, match="outside"):
        S3Retriever.load(saved, model_path=model_dir)


def test_other_model_weights_are_refused(
    saved: Path, other_model_dir: Path, model_dir: Path
) -> None:
    """Same architecture, same folder name, different weights: model mismatch."""
    assert other_model_dir.name == model_dir.name
    with pytest.raises(IndexLoadError, match="Model mismatch"):
        S3Retriever.load(saved, model_path=other_model_dir)


def test_model_with_other_key_projection_is_refused(
    saved: Path, model_dir: Path, tmp_path: Path
) -> None:
    """Same file layout, but a retrieval layer's k_proj changed: the index's keys are stale."""
    from safetensors.torch import load_file, save_file

    copy = tmp_path / "models" / model_dir.name
    shutil.copytree(model_dir, copy)
    tensors = load_file(str(copy / "model.safetensors"))
    tensors["model.layers.1.self_attn.k_proj.weight"] *= 2.0
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    assert (copy / "model.safetensors").stat().st_size == (
        model_dir / "model.safetensors"
    ).stat().st_size
    with pytest.raises(IndexLoadError, match="Model mismatch"):
        S3Retriever.load(saved, model_path=copy)


def test_other_tokenizer_is_refused(saved: Path, model_dir: Path, tmp_path: Path) -> None:
    """Same weights with a different tokenizer: tokenizer mismatch."""
    copy = tmp_path / "models" / model_dir.name
    shutil.copytree(model_dir, copy)
    spec = json.loads((copy / "tokenizer.json").read_text())
    spec["normalizer"] = {"type": "Lowercase"}
    (copy / "tokenizer.json").write_text(json.dumps(spec))
    with pytest.raises(IndexLoadError, match="Tokenizer mismatch"):
        S3Retriever.load(saved, model_path=copy)


def test_tampered_sae_bundle_is_refused(saved: Path, model_dir: Path) -> None:
    """Changed SAE weights are refused, by file checksum and by the bundle checksum."""
    name = "sae/layer_01.safetensors"
    path = saved / name
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10
    path.write_bytes(bytes(data))
    with pytest.raises(IndexLoadError, match=name.replace(".", r"\.")):
        S3Retriever.load(saved, model_path=model_dir)
    _refresh_checksum(saved, name)
    with pytest.raises(IndexLoadError, match="SAE mismatch"):
        S3Retriever.load(saved, model_path=model_dir)


def test_inconsistent_tables_are_refused(saved: Path, model_dir: Path) -> None:
    """Arrays that pass their checksums but disagree with the manifest are refused."""
    name = "corpus/doc_token_count.npy"
    counts = np.load(saved / name)
    np.save(saved / name, counts + 1, allow_pickle=False)
    _refresh_checksum(saved, name)
    with pytest.raises(IndexLoadError, match="disagree"):
        S3Retriever.load(saved, model_path=model_dir)


class _Trap:
    """Unpickling this writes a marker file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[Any, tuple[str, str]]:
        return (open, (str(self.marker), "w"))


def _plant_object_array(saved: Path, name: str, marker: Path) -> None:
    crafted = np.empty(2, dtype=object)
    crafted[0] = _Trap(marker)
    crafted[1] = 1
    np.save(saved / name, crafted, allow_pickle=True)
    _refresh_checksum(saved, name)


def test_object_array_is_never_unpickled(saved: Path, model_dir: Path, tmp_path: Path) -> None:
    """A crafted .npy holding a pickled object array (with a valid checksum) is refused unread."""
    marker = tmp_path / "unpickled"
    _plant_object_array(saved, "corpus/unit_doc.npy", marker)
    with pytest.raises((IndexLoadError, ValueError)):
        S3Retriever.load(saved, model_path=model_dir)
    assert not marker.exists()


def test_object_array_raises_index_load_error(saved: Path, model_dir: Path, tmp_path: Path) -> None:
    """A crafted object array is reported as a damaged index, naming the file."""
    _plant_object_array(saved, "postings/L1_H0_indptr.npy", tmp_path / "unpickled")
    with pytest.raises(IndexLoadError, match=r"L1_H0_indptr\.npy"):
        S3Retriever.load(saved, model_path=model_dir)


def test_key_clusters_are_saved_and_read_back(
    model_dir: Path,
    bundle_dir: Path,
    corpus: dict[str, str],
    corpus_metadata: dict[str, Any],
    tmp_path: Path,
) -> None:
    """An index past the clustered-search threshold keeps its key clusters: the loaded index
    searches through the same clusters (same hits) without building them again; damaged
    cluster arrays are refused with the reason."""
    scoring = ScoringConfig(cluster_search_above=10, positions_per_row=40)
    original = _build(model_dir, bundle_dir, corpus, corpus_metadata, scoring=scoring)
    original.save(tmp_path / "index")
    saved_files = sorted(p.name for p in (tmp_path / "index" / "clusters").iterdir())
    assert len(saved_files) == 4 * len(original.index.key_stores)
    restored = S3Retriever.load(tmp_path / "index", model_path=model_dir)
    for field, store in restored.index.key_stores.items():
        assert store.has_derived(("clusters", cluster_count(len(store.scales))))
        mine, theirs = key_clusters(store), key_clusters(original.index.key_stores[field])
        assert np.array_equal(mine.cluster_of, theirs.cluster_of)
        assert np.array_equal(mine.order, theirs.order)
    assert _results(restored) == _results(original)

    name = "clusters/" + next(n for n in saved_files if n.endswith("_cluster_of.npy"))
    ids = np.load(tmp_path / "index" / name)
    np.save(tmp_path / "index" / name, np.full_like(ids, 60000), allow_pickle=False)
    _refresh_checksum(tmp_path / "index", name)
    with pytest.raises(IndexLoadError, match="clusters that do not exist"):
        S3Retriever.load(tmp_path / "index", model_path=model_dir)


def test_small_indexes_save_no_clusters(saved: Path) -> None:
    assert not (saved / "clusters").exists()


def test_bundle_whose_files_differ_from_a_resave_round_trips(
    model_dir: Path, bundle_dir: Path, corpus: dict[str, str], tmp_path: Path
) -> None:
    """A bundle written by other means (the shipped one: other JSON formatting) hashes
    differently once the index saves its copy; the manifest records the copy's checksum."""
    shipped = tmp_path / "shipped"
    shutil.copytree(bundle_dir, shipped)
    config = json.loads((shipped / "config.json").read_text())
    (shipped / "config.json").write_text(json.dumps(config))  # no indentation: other bytes
    retriever = _build(model_dir, shipped, {"trains": corpus["trains"]}, {"trains": {}})
    retriever.save(tmp_path / "index")
    loaded = S3Retriever.load(tmp_path / "index", model_path=model_dir)
    question = "When does the train leave?"
    assert [h.id for h in loaded.retrieve(question)] == [h.id for h in retriever.retrieve(question)]
