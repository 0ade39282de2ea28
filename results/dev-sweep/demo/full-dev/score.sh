#!/usr/bin/env bash
# A second look on dev, with less noise: the two leading transfers' final adapters (round 2, copied from
# the sweep's run folders into adapters/) scored on ALL 570 questions of ARC-Easy's dev split, the test
# split sealed. The LLM first (where the variants differ), then the SLM, then the base models.
# Run from the repository root: bash results/dev-sweep/demo/full-dev/score.sh  (a finished file is skipped)
set -euo pipefail
export FEDCOLLM_SEAL_TEST=1
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
D=results/dev-sweep/demo/full-dev
LLM=qwen2.5-coder-1.5b-instruct
SLM=qwen2.5-coder-0.5b-instruct
score() {  # name model [adapter]
  [ -f "$D/$1.json" ] && return
  .venv/bin/fedcollm eval --model "$2" ${3:+--adapter "$3"} --tasks arc_easy --split dev --out "$D/$1.json.tmp" \
    2> "$D/$1.stderr.tmp"
  mv "$D/$1.json.tmp" "$D/$1.json"; rm -f "$D/$1.stderr.tmp"
}
score llm-paper "$LLM" "$D/adapters/paper/omega"
score llm-llm-weight-0 "$LLM" "$D/adapters/llm-weight-0/omega"
score slm-paper "$SLM" "$D/adapters/paper/theta"
score slm-llm-weight-0 "$SLM" "$D/adapters/llm-weight-0/theta"
score llm-zero-shot "$LLM"
score slm-zero-shot "$SLM"
