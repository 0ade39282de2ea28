#!/usr/bin/env bash
# The demo's transfer chosen on dev: `make demo`'s config (configs/demo.yaml) once per KD variant, every
# round evaluated on ARC-Easy's dev split (first 100 questions), the test split sealed for the whole sweep.
# The base models' dev accuracy (round 0) is scored once, in the first variant's run; the others skip it.
# Run from the repository root: bash results/dev-sweep/demo/sweep.sh  (a variant already here is skipped,
# one whose run finished under $RUNS is only copied).
set -euo pipefail
export FEDCOLLM_SEAL_TEST=1
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
OUT=results/dev-sweep/demo
RUNS=${RUNS:-/tmp/dev-sweep-demo}
declare -A VARIANTS=(
  [paper]=""
  [select-greater]="kd.select=greater eval.zero_shot=false"
  [llm-weight-0]="kd.llm_weight=0 eval.zero_shot=false"
  [convex-0.1]="kd.mix=convex kd.weight=0.1 eval.zero_shot=false"
)
for name in ${NAMES:-paper select-greater llm-weight-0 convex-0.1}; do
  [ -f "$OUT/$name/metrics.jsonl" ] && continue
  if [ ! -f "$RUNS/$name/report.md" ]; then
    start=$(date +%s)
    # shellcheck disable=SC2086
    .venv/bin/fedcollm run --config configs/demo.yaml eval.split=dev run_name="$name" output_dir="$RUNS" \
      ${VARIANTS[$name]} > "$RUNS-$name.stdout" 2> "$RUNS-$name.stderr"
    echo "$name: $(( $(date +%s) - start )) s wall" >> "$OUT/wall.txt"
  fi
  mkdir -p "$OUT/$name"
  cp "$RUNS/$name/metrics.jsonl" "$RUNS/$name/config.yaml" "$RUNS/$name/report.md" "$OUT/$name/"
  cp "$RUNS-$name.stdout" "$OUT/$name/stdout.txt"
done
