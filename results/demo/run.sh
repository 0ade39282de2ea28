#!/usr/bin/env bash
# What `make demo` runs (`fedcollm run --config configs/demo.yaml`), with a fixed run name, under `time -v`,
# and its outputs copied here. Run from the repository root: bash results/demo/run.sh [overrides...]
# (this record: precision=fp32, so that a machine with fast bf16 repeats the fp32 record question by question).
set -euo pipefail
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
OUT=${OUT:-results/demo}
rm -rf /tmp/demo
/usr/bin/time -v .venv/bin/fedcollm run --config configs/demo.yaml run_name=demo-cpu output_dir=/tmp/demo/runs "$@" \
    > "$OUT/stdout.txt" 2> "$OUT/stderr.txt"
cp /tmp/demo/runs/demo-cpu/{metrics.jsonl,report.md,config.yaml,accuracy_per_round.png} "$OUT/"
