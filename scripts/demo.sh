#!/usr/bin/env bash
# Set up, index a real long document with the default model, and answer a question from it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
rm -rf runs/gpl-index
s3-retriever index examples/data/gpl-3.0.txt --out runs/gpl-index
s3-retriever query runs/gpl-index "Am I allowed to charge a fee for giving someone a copy?" --budget 256
