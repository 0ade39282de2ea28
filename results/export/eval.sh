#!/usr/bin/env bash
# Score the adapter and its exports on the first 200 questions of ARC-Easy's DEV split (test sealed), with
# per-question predictions, then count how often each export picks the adapter's answer (agreement.py) and
# compare accuracies (fedcollm compare). Run from the repository root after export.sh: bash results/export/eval.sh
set -euo pipefail
export FEDCOLLM_SEAL_TEST=1
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
EXPORTS=${EXPORTS:-/tmp/fedcollm-export}
R=results/export
THETA=results/dev-sweep/demo/full-dev/adapters/llm-weight-0/theta
SLM=qwen2.5-coder-0.5b-instruct
score() {  # name model [adapter]; a finished result is skipped
  [ -f "$R/$1.json" ] && return
  start=$(date +%s)
  nice -n 10 .venv/bin/fedcollm eval --model "$2" ${3:+--adapter "$3"} --tasks arc_easy --split dev --limit 200 \
    --precision bf16 --predictions "$R/predictions/$1" --out "$R/$1.json.tmp" 2> "$R/$1.stderr.tmp"
  mv "$R/$1.json.tmp" "$R/$1.json"; rm -f "$R/$1.stderr.tmp"
  echo "$1: $(( $(date +%s) - start )) s" >> "$R/eval-wall.txt"
}
score adapter "$SLM" "$THETA"
score hf "$EXPORTS/slm-hf"
score gguf-bf16 "$EXPORTS/slm-bf16.gguf"
score gguf-q8_0 "$EXPORTS/slm-q8_0.gguf"
score base "$SLM"
.venv/bin/python $R/agreement.py $R/predictions/adapter $R/predictions/{hf,gguf-bf16,gguf-q8_0,base} > $R/agreement.json
for x in hf gguf-bf16 gguf-q8_0 base; do
  .venv/bin/fedcollm compare $R/$x.json $R/adapter.json --out $R/compare-$x-vs-adapter.json > /dev/null
done
cat $R/agreement.json
