"""Routing, the sharded folder's manifest and checksums, and Ray staying out of the core."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import s3_retriever
from s3_retriever import SAEBundle
from s3_retriever.distributed import layout
from s3_retriever.distributed.routing import shard_of
from s3_retriever.errors import IndexLoadError
from s3_retriever.models import LoadedModel
from tests.distributed.conftest import reference


def test_routing_is_a_stable_hash_of_the_id() -> None:
    # Fixed values: a change of rule would strand every built index's documents.
    assert [shard_of(f"doc-{i}", 4) for i in range(8)] == [0, 1, 2, 2, 3, 3, 2, 1]
    script = "from s3_retriever.distributed.routing import shard_of; print(shard_of('doc-1', 7))"
    runs = {
        subprocess.run(
            [sys.executable, "-c", script], capture_output=True, text=True, check=True
        ).stdout
        for _ in range(2)
    }
    assert runs == {"3\n"}  # the same in every process, whatever its hash seed
    counts = np.bincount([shard_of(f"id-{i}", 4) for i in range(4000)], minlength=4)
    assert counts.min() > 900
    with pytest.raises(ValueError, match="num_shards"):
        shard_of("x", 0)


def test_core_modules_import_with_ray_blocked() -> None:
    """Every module of the core imports while ``import ray`` fails."""
    root = Path(s3_retriever.__file__).parent
    modules = sorted(
        "s3_retriever." + ".".join(p.relative_to(root).with_suffix("").parts)
        for p in root.rglob("*.py")
        if "distributed" not in p.parts and p.name != "__init__.py"
    )
    assert len(modules) > 20
    script = (
        "import sys, importlib\nsys.modules['ray'] = None\n"
        f"for name in {modules!r}:\n    importlib.import_module(name)\n"
        "import s3_retriever.distributed\n"
        "assert 'ray' not in {m.split('.')[0] for m in sys.modules if sys.modules[m]}\n"
        "print('ok')"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "ok"


def test_load_without_ray_says_how_to_install_it() -> None:
    script = (
        "import sys\nsys.modules['ray'] = None\n"
        "from s3_retriever.distributed._ray import require_ray\nrequire_ray()"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode != 0
    assert "pip install 's3-retriever[ray]'" in done.stderr


def test_shards_are_checksummed(
    tmp_path: Path, loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: Any
) -> None:
    shard = reference(loaded, bundle, shard_config, rows[:3])
    entry = layout.write_shard(tmp_path, 0, shard, np.arange(3))
    manifest = layout.ShardedManifest(num_shards=1, next_seq=3, complete=True, shards=[entry])
    layout.write_manifest(tmp_path, manifest)
    assert layout.read_manifest(tmp_path) == manifest
    restored, order = layout.load_shard(tmp_path, 0, entry, loaded=loaded)
    assert restored.doc_ids == shard.doc_ids and order.tolist() == [0, 1, 2]
    np.save(tmp_path / "shard-00000" / "order.npy", np.array([2, 1, 0]))
    with pytest.raises(IndexLoadError, match="checksum"):
        layout.load_shard(tmp_path, 0, entry, loaded=loaded)
    with pytest.raises(ValueError, match="sequence numbers"):
        layout.write_shard(tmp_path, 0, shard, np.arange(2))


def test_a_shard_write_clears_what_killed_writes_left_and_keeps_a_crash_backup_readable(
    tmp_path: Path, loaded: LoadedModel, bundle: SAEBundle, shard_config: Any, rows: Any
) -> None:
    shard = reference(loaded, bundle, shard_config, rows[:2])
    layout.write_shard(tmp_path, 0, shard, np.arange(2))
    # A killed write of shard 0 left its staging folder; a crash mid-swap left only a backup.
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (tmp_path / f".shard-00000.saving-{child.pid}-x").mkdir()
    (tmp_path / "shard-00000").rename(tmp_path / f".shard-00000.old-{child.pid}-y")
    assert layout.shard_folder(tmp_path, 0) == tmp_path / f".shard-00000.old-{child.pid}-y"
    (tmp_path / "notes").mkdir()
    layout.write_shard(tmp_path, 0, shard, np.arange(2))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes", "shard-00000"]


def test_damaged_manifests_and_foreign_folders_are_refused(tmp_path: Path) -> None:
    with pytest.raises(IndexLoadError, match="no sharded index"):
        layout.read_manifest(tmp_path)
    (tmp_path / layout.MANIFEST).write_text(json.dumps({"format": "other"}))
    with pytest.raises(IndexLoadError, match="damaged"):
        layout.read_manifest(tmp_path)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "todo.txt").write_text("keep me")
    with pytest.raises(ValueError, match="not empty"):
        layout.check_output_folder(other)
    single = tmp_path / "single"
    single.mkdir()
    (single / "manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="single"):
        layout.check_output_folder(single)
    assert (other / "todo.txt").read_text() == "keep me"
