#!/usr/bin/env bash
# The full evaluation behind docs/results.md: every report in docs/results/eval_*.json, then the
# page itself. Takes a few hours on 2 CPU cores; each line can be run on its own.
# Usage: ./scripts/eval_all.sh [DATA_DIR]   (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
. .venv/bin/activate
DATA=${1:-../shared/data}
OUT=docs/results
ALL=s3:exact,hybrid:exact,s3:aligned,bm25,dense,bm25+dense,full
BASE=s3:exact,hybrid:exact,bm25,dense,bm25+dense,full

s3-retriever eval --data "$DATA" --tasks hotpotqa-3k --n 60 --methods "$ALL" --out "$OUT/eval_hotpotqa_3k"
s3-retriever eval --data "$DATA" --tasks qmsum --n 60 --methods "$BASE" --out "$OUT/eval_qmsum"
s3-retriever eval --data "$DATA" --tasks hotpotqa-9k --n 30 --methods "$BASE" --out "$OUT/eval_hotpotqa_9k"
s3-retriever eval --data "$DATA" --tasks leval/natural_question,leval/scientific_qa,leval/legal_contract_qa,kv \
    --n 12 --methods "$BASE" --out "$OUT/eval_leval_kv"
s3-retriever eval --data "$DATA" --tasks hotpotqa-3k --n 15 --methods hybrid:exact,dense \
    --budgets 2048 --qa-budgets 2048 --generator Qwen2.5-Coder-0.5B-Instruct --out "$OUT/eval_qa_hotpotqa_3k"
python scripts/results_page.py
