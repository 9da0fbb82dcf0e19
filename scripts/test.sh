#!/usr/bin/env bash
# Set up, then run lint, type checks and the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
ruff check s3_retriever tests scripts
mypy s3_retriever
# pytest exits 5 when it collects no tests; that must fail too, and it does (non-zero).
python -m pytest -q -p no:cacheprovider "$@"
