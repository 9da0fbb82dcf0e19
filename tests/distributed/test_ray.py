"""Sharded indexing and search on a local Ray cluster that these tests start (2 CPUs).

A 4-shard index built by :func:`build_index` returns what one :class:`S3Retriever` over the same
documents returns, in every mode, with filters, after deletes and re-adds and a save; a build
whose scan actor or driver is killed resumes to the same shards.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from s3_retriever import S3Retriever, SAEBundle
from s3_retriever.distributed.lexical_stats import UnitTerms, query_terms
from s3_retriever.models import LoadedModel
from tests.distributed.conftest import QUESTIONS, assert_same_hits, reference, search_cases

ray = pytest.importorskip("ray")
psutil = pytest.importorskip("psutil")

from s3_retriever.distributed import ShardedRetriever, build_index, layout  # noqa: E402

NUM_SHARDS = 4


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    ray.init(num_cpus=2, log_to_driver=False)
    yield ray
    ray.shutdown()


def _build(
    out: Path, model_dir: Path, bundle_dir: Path, config: Any, source: Any, **kw: Any
) -> Any:
    return build_index(
        source,
        out,
        NUM_SHARDS,
        model_path=model_dir,
        sae_path=bundle_dir,
        config=config,
        dtype="float32",
        batch_size=2,
        commit_every=2,
        progress=False,
        **kw,
    )


@pytest.fixture(scope="module")
def built(
    cluster: Any,
    tmp_path_factory: pytest.TempPathFactory,
    model_dir: Path,
    bundle_dir: Path,
    shard_config: Any,
    rows: list[dict[str, Any]],
) -> tuple[Path, Any]:
    out = tmp_path_factory.mktemp("ray") / "sharded"
    return out, _build(out, model_dir, bundle_dir, shard_config, rows)


@pytest.fixture(scope="module")
def sharded(built: tuple[Path, Any], model_dir: Path) -> Iterator[ShardedRetriever]:
    opened = ShardedRetriever.load(built[0], model_dir, dtype="float32", num_cpus_per_shard=0.25)
    yield opened
    opened.close()


@pytest.fixture(scope="module")
def single(loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: Any) -> S3Retriever:
    return reference(loaded, bundle, shard_config, rows)


def _assert_same_shards(a: Path, b: Path, loaded: LoadedModel) -> None:
    """Both folders hold the same documents, order, keys and postings in every shard."""
    for i in range(NUM_SHARDS):
        left, left_order = layout.load_shard(a, i, None, loaded=loaded)
        right, right_order = layout.load_shard(b, i, None, loaded=loaded)
        assert left.doc_ids == right.doc_ids and left.index.corpus.texts == right.index.corpus.texts
        np.testing.assert_array_equal(left_order, right_order)
        for field, store in left.index.key_stores.items():
            np.testing.assert_array_equal(store.codes, right.index.key_stores[field].codes)
            np.testing.assert_array_equal(store.scales, right.index.key_stores[field].scales)
        for field, postings in left.index.postings.items():
            np.testing.assert_array_equal(postings.indptr, right.index.postings[field].indptr)
            np.testing.assert_array_equal(
                postings.position_bytes, right.index.postings[field].position_bytes
            )


def test_build_writes_ordinary_shards_and_a_manifest(
    built: tuple[Path, Any], model_dir: Path, rows: list[dict[str, Any]]
) -> None:
    out, report = built
    assert report.added == len(rows) and report.skipped == 0
    assert sum(report.shards) == len(rows) and min(report.shards) > 0
    manifest = layout.read_manifest(out)
    assert manifest.complete and manifest.next_seq == len(rows)
    ids: list[str] = []
    for i, entry in enumerate(manifest.shards):
        shard = S3Retriever.load(out / layout.shard_name(i) / "index", model_dir)
        assert len(shard) == entry.n_documents == report.shards[i]
        assert entry.checksum == layout.shard_checksum(out / layout.shard_name(i))
        ids += shard.doc_ids
    assert sorted(ids) == sorted(r["id"] for r in rows)


def test_sharded_search_equals_one_index(sharded: ShardedRetriever, single: S3Retriever) -> None:
    worst = 0.0
    for case in search_cases():
        for question in QUESTIONS:
            worst = max(
                worst,
                assert_same_hits(
                    sharded.retrieve(question, **case), single.retrieve(question, **case)
                ),
            )
    assert worst < 1e-5


def test_bm25_statistics_equal_one_index(sharded: ShardedRetriever, single: S3Retriever) -> None:
    corpus = single.index.corpus
    terms_of_single = UnitTerms(
        [corpus.unit_text(u) for u in range(corpus.n_units)], single.config.lexical
    )
    for question in QUESTIONS:
        stats = sharded.bm25_statistics(question)
        want = terms_of_single.stats(query_terms(question, single.config.lexical))
        assert stats == want
        assert stats.n_units == corpus.n_units and stats.doc_freq


def _kill_scan_actor() -> int:
    """SIGKILL the build's scan actor process; returns its pid."""
    for proc in psutil.process_iter(["pid", "cmdline"]):
        cmdline = " ".join(proc.info["cmdline"] or [])
        if cmdline.startswith("ray::MapWorker"):
            os.kill(proc.info["pid"], signal.SIGKILL)
            return int(proc.info["pid"])
    raise AssertionError("no scan actor process found")


def test_a_killed_scan_actor_is_replaced_and_nothing_is_lost_or_doubled(
    built: tuple[Path, Any],
    tmp_path: Path,
    model_dir: Path,
    bundle_dir: Path,
    shard_config: Any,
    rows: list[dict[str, Any]],
    loaded: LoadedModel,
) -> None:
    killed: list[int] = []

    def kill_once(report: Any) -> None:
        if not killed:
            killed.append(_kill_scan_actor())

    out = tmp_path / "killed"
    report = _build(out, model_dir, bundle_dir, shard_config, rows, on_commit=kill_once)
    assert killed and report.added == len(rows)
    _assert_same_shards(out, built[0], loaded)


def test_a_killed_driver_resumes_to_the_same_index(
    built: tuple[Path, Any],
    tmp_path: Path,
    model_dir: Path,
    bundle_dir: Path,
    shard_config: Any,
    rows: list[dict[str, Any]],
    loaded: LoadedModel,
) -> None:
    out = tmp_path / "resumed"
    source = tmp_path / "corpus.jsonl"
    import json

    source.write_text("".join(json.dumps(r) + "\n" for r in rows))
    script = textwrap.dedent(
        f"""
        import os, sys
        from s3_retriever.config import RetrieverConfig
        from s3_retriever.distributed import build_index
        config = RetrieverConfig.from_dict({shard_config.to_dict()!r})
        commits = []
        def die_after_three(report):
            commits.append(1)
            if len(commits) == 3:
                os._exit(3)
        build_index({str(source)!r}, {str(out)!r}, {NUM_SHARDS}, model_path={str(model_dir)!r},
                    sae_path={str(bundle_dir)!r}, config=config, dtype="float32",
                    ray_address={ray.get_runtime_context().gcs_address!r}, batch_size=2,
                    commit_every=2, progress=False, on_commit=die_after_three)
        """
    )
    died = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert died.returncode == 3, died.stderr[-2000:]
    assert not layout.read_manifest(out).complete
    report = _build(out, model_dir, bundle_dir, shard_config, str(source))
    assert report.skipped > 0 and report.skipped + report.added == len(rows)
    assert layout.read_manifest(out).complete
    # JSONL documents carry their file as metadata "source"; otherwise the same as the rows.
    for i in range(NUM_SHARDS):
        shard, _ = layout.load_shard(out, i, None, loaded=loaded)
        assert all(m.pop("source") == str(source) for m in shard.index.corpus.metadatas)
    _assert_same_shards(out, built[0], loaded)


def test_the_http_endpoint_serves_a_sharded_index(
    sharded: ShardedRetriever, single: S3Retriever
) -> None:
    from s3_retriever.serving import RemoteRetriever, running

    with running(sharded) as url:
        remote = RemoteRetriever(url)
        assert len(remote) == len(single)
        for mode in ("s3", "hybrid", "bm25"):
            for order in ("document", "score"):
                got = remote.retrieve(QUESTIONS[1], token_budget=256, mode=mode, order=order)
                want = single.retrieve(QUESTIONS[1], token_budget=256, mode=mode, order=order)
                assert_same_hits(got, want)


def test_deletes_re_adds_and_save_stay_exact(
    sharded: ShardedRetriever,
    loaded: LoadedModel,
    bundle: SAEBundle,
    shard_config: Any,
    rows: list[dict[str, Any]],
    model_dir: Path,
    tmp_path: Path,
) -> None:
    single = reference(loaded, bundle, shard_config, rows)
    gone = [r["id"] for r in rows[::3]]
    assert sharded.delete([*gone, "no-such-id"]) == single.delete(gone) == len(gone)
    again = rows[::6]
    for target in (single, sharded):
        target.add_documents(
            [r["text"] for r in again], [r["id"] for r in again], [r["metadata"] for r in again]
        )
    new = {
        "id": "new-doc",
        "text": "Farmers gathered apples by the river.",
        "metadata": {"group": "a", "n": 99},
    }
    for target in (single, sharded):
        target.add_documents([new["text"]], [new["id"]], [new["metadata"]])
    assert len(sharded) == len(single)
    cases = [c for c in search_cases() if c["token_budget"] in (128, 400, 3000)]
    for case in cases:
        for question in QUESTIONS:
            assert_same_hits(sharded.retrieve(question, **case), single.retrieve(question, **case))
    saved = tmp_path / "saved"
    sharded.save(saved)
    sharded.close()
    reopened = ShardedRetriever.load(saved, model_dir, dtype="float32", num_cpus_per_shard=0.25)
    try:
        assert layout.read_manifest(saved).next_seq == len(rows) + len(again) + 1
        for case in cases:
            assert_same_hits(
                reopened.retrieve(QUESTIONS[0], **case), single.retrieve(QUESTIONS[0], **case)
            )
    finally:
        reopened.close()


def test_the_cli_builds_and_queries_a_sharded_index(
    cluster: Any,
    tmp_path: Path,
    model_dir: Path,
    bundle_dir: Path,
    rows: list[dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    import json

    from s3_retriever.cli import main

    source = tmp_path / "corpus.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in rows[:8]))
    out = tmp_path / "cli-sharded"
    address = ray.get_runtime_context().gcs_address
    common = ["--model", str(model_dir), "--ray", address]
    argv = ["index", str(source), "--out", str(out), "--shards", "2", "--sae", str(bundle_dir)]
    assert main([*argv, *common, "--quiet"]) == 0, capsys.readouterr().err
    assert "8 of 8 document(s)" in capsys.readouterr().out
    assert main([*argv, *common, "--quiet"]) == 0
    assert "indexed 0 of 8 document(s)" in capsys.readouterr().out  # a rerun skips them all
    assert main(["query", str(out), QUESTIONS[0], "--json", *common]) == 0
    answer = json.loads(capsys.readouterr().out)
    hits = answer["hits"]
    assert answer["question"] == QUESTIONS[0]
    assert hits and {h["doc_id"] for h in hits} <= {r["id"] for r in rows[:8]}


def test_reshard_of_a_single_index_equals_a_sharded_build(
    built: tuple[Path, Any],
    tmp_path: Path,
    loaded: LoadedModel,
    bundle: SAEBundle,
    shard_config: Any,
    rows: list[dict[str, Any]],
    model_dir: Path,
) -> None:
    from s3_retriever.distributed import reshard

    single = reference(loaded, bundle, shard_config, rows)
    single.save(tmp_path / "single")
    out = tmp_path / "resharded"
    counts = reshard(tmp_path / "single", out, NUM_SHARDS, model_path=model_dir)
    assert counts == [e.n_documents for e in layout.read_manifest(built[0]).shards]
    manifest = layout.read_manifest(out)
    assert manifest.complete and manifest.next_seq == len(rows)
    _assert_same_shards(out, built[0], loaded)
    with pytest.raises(ValueError, match="already holds a sharded index"):
        reshard(tmp_path / "single", out, NUM_SHARDS, model_path=model_dir)
    opened = ShardedRetriever.load(out, model_dir, dtype="float32", use_ray=False)
    for case in search_cases()[::2]:
        assert_same_hits(
            opened.retrieve(QUESTIONS[1], **case), single.retrieve(QUESTIONS[1], **case)
        )
