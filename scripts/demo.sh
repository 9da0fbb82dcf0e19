#!/usr/bin/env bash
# Set up, index a real long document with the default model, and answer a question from it.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
. .venv/bin/activate
rm -rf runs/gpl-index
s3-retriever index examples/data/gpl-3.0.txt --out runs/gpl-index
# Best first. --mode s3 ranks by the model's attention alone: it puts the answer ("You may charge
# any price or no price for each copy that you convey...") first; the default hybrid mode ranks it
# third, behind shorter sentences that share more words with the question.
s3-retriever query runs/gpl-index "Am I allowed to charge a fee for giving someone a copy?" \
    --token-budget 256 --mode s3
