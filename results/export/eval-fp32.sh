#!/usr/bin/env bash
# The same 200 dev questions scored in fp32 arithmetic (the bf16 weights upcast), as llama.cpp computes on a
# CPU: the comparison then measures the export's rounding alone, not bf16 arithmetic noise (eval.sh, this
# machine's `auto`). Adds an f16 HF export (f16 keeps ~8x more of the tuned delta than bf16, see README).
# Run from the repository root after export.sh and eval.sh: bash results/export/eval-fp32.sh
set -euo pipefail
export FEDCOLLM_SEAL_TEST=1
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
EXPORTS=${EXPORTS:-/tmp/fedcollm-export}
R=results/export
THETA=results/dev-sweep/demo/full-dev/adapters/llm-weight-0/theta
SLM=qwen2.5-coder-0.5b-instruct
[ -e "$EXPORTS/slm-hf-f16" ] || nice -n 10 .venv/bin/fedcollm export --adapter "$THETA" --model "$SLM" --role slm \
  --format hf --quant f16 --out "$EXPORTS/slm-hf-f16" 2> /dev/null
score() {  # name model [adapter]; a finished result is skipped
  [ -f "$R/$1.json" ] && return
  start=$(date +%s)
  nice -n 10 .venv/bin/fedcollm eval --model "$2" ${3:+--adapter "$3"} --tasks arc_easy --split dev --limit 200 \
    --precision fp32 --predictions "$R/predictions/$1" --out "$R/$1.json.tmp" 2> "$R/$1.stderr.tmp"
  mv "$R/$1.json.tmp" "$R/$1.json"; rm -f "$R/$1.stderr.tmp"
  echo "$1: $(( $(date +%s) - start )) s" >> "$R/eval-wall.txt"
}
score fp32-adapter "$SLM" "$THETA"
score fp32-gguf-bf16 "$EXPORTS/slm-bf16.gguf"
score fp32-hf-f16 "$EXPORTS/slm-hf-f16"
score fp32-gguf-q8_0 "$EXPORTS/slm-q8_0.gguf"
score fp32-hf "$EXPORTS/slm-hf"
.venv/bin/python $R/agreement.py $R/predictions/fp32-adapter $R/predictions/fp32-{hf,gguf-bf16,hf-f16,gguf-q8_0} \
  $R/predictions/adapter > $R/agreement-fp32.json
cat $R/agreement-fp32.json
for x in fp32-hf fp32-gguf-bf16 fp32-hf-f16 fp32-gguf-q8_0; do
  .venv/bin/fedcollm compare $R/$x.json $R/fp32-adapter.json --out $R/compare-$x-vs-adapter.json > /dev/null
done
