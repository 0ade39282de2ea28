#!/usr/bin/env bash
# Export the committed demo SLM adapter θ (results/dev-sweep/demo/full-dev/adapters/llm-weight-0/theta: round 2
# of the demo's transfer, kd.llm_weight=0; the demo run folder's own adapters are not committed) in every format.
# Run from the repository root: bash results/export/export.sh  (the exports go to $EXPORTS, default
# /tmp/fedcollm-export). Its output, with sizes, peak RSS and seconds, is results/export/export.txt:
#   bash results/export/export.sh > results/export/export.txt 2>&1
set -euo pipefail
EXPORTS=${EXPORTS:-/tmp/fedcollm-export}
THETA=results/dev-sweep/demo/full-dev/adapters/llm-weight-0/theta
SLM=qwen2.5-coder-0.5b-instruct
mkdir -p "$EXPORTS"
for spec in "hf bf16 slm-hf" "gguf bf16 slm-bf16.gguf" "gguf q8_0 slm-q8_0.gguf" "gguf-lora f32 slm-lora.gguf"; do
  set -- $spec
  start=$(date +%s)
  /usr/bin/time -f "peak RSS %M KiB" nice -n 10 .venv/bin/fedcollm export --adapter "$THETA" --model "$SLM" --role slm \
    --format "$1" --quant "$2" --out "$EXPORTS/$3" 2> >(grep -v "Loading weights\|Writing model" >&2)
  echo "  $(( $(date +%s) - start )) s"
done
