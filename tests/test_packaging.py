"""Packaging metadata of the three packages, and the README code that CI runs from the wheels.

scripts/check_wheels.sh (run by scripts/test.sh) builds the wheels, installs them in a fresh venv
and runs the README quickstart; these checks are the fast part of that.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python 3.11+

ROOT = Path(__file__).resolve().parents[1]
PYPROJECTS = [
    ROOT / "pyproject.toml",
    ROOT / "integrations" / "langchain-s3" / "pyproject.toml",
    ROOT / "integrations" / "llama-index-retrievers-s3" / "pyproject.toml",
]


@pytest.mark.parametrize("path", PYPROJECTS, ids=lambda p: p.parent.name)
def test_spdx_license_and_a_setuptools_that_reads_it(path: Path) -> None:
    data = tomllib.loads(path.read_text())
    assert data["project"]["license"] == "Apache-2.0"  # an SPDX string, not a {text=} table
    assert "setuptools>=77" in data["build-system"]["requires"]  # PEP 639 support


def test_readme_quickstart_is_extracted_whole() -> None:
    script = ROOT / "scripts" / "readme_code.py"
    spec = importlib.util.spec_from_file_location("readme_code", script)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    code = module.code_after((ROOT / "README.md").read_text(), "## Python")
    compile(code, "quickstart.py", "exec")
    assert "S3Retriever.from_pretrained()" in code and "retrieve(" in code
    with pytest.raises(SystemExit, match="no heading"):
        module.code_after("# x\n", "## Python")
