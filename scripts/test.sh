#!/usr/bin/env bash
# Set up, then run lint, type checks and every test suite (core, eval, both integrations).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
ruff check s3_retriever tests scripts integrations docs/examples
mypy s3_retriever
# Each suite runs on its own, under its package's pytest settings (both adapters load the
# fixtures of s3_retriever/testing/plugin.py). pytest exits 5 when it collects nothing, which
# fails this script like any other error.
python -m pytest -q -p no:cacheprovider tests "$@"
python -m pytest -q -p no:cacheprovider integrations/langchain-s3/tests
python -m pytest -q -p no:cacheprovider integrations/llama-index-retrievers-s3/tests
# The three wheels, installed in a fresh venv, run the README quickstart.
./scripts/check_wheels.sh
