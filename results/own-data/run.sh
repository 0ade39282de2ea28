#!/usr/bin/env bash
# "Your own data" on the real models: one `fedcollm run` per format (a task YAML in lm-eval's format, a JSONL
# folder, instruction data), a small budget in simulation, and `fedcollm experiment` on the JSONL folder.
# The data is built in a scratch folder (make_data.py: derived from the shared benchmark copies; never committed).
# Run from the repository root: bash results/own-data/run.sh   (each run resumes; finished ones are kept)
set -euo pipefail
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
OUT=results/own-data
DATA=${OWN_DATA:-/tmp/fedcollm-own-data}
.venv/bin/python $OUT/make_data.py "$DATA" > /dev/null
# 40 training questions per task (8 for D^a, 32 for 4 clients), 1 round, 40 dev questions after it
SMALL="federation.train_size=40 federation.rounds=1 eval.split=dev eval.limit=40 precision=fp32 output_dir=$OUT/runs"
run() {  # name, overrides...
  local name=$1; shift
  [ -f "$OUT/runs/$name/report.md" ] && return 0
  start=$(date +%s)
  # shellcheck disable=SC2086
  .venv/bin/fedcollm run $SMALL run_name="$name" "$@" >> "$OUT/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s wall" >> "$OUT/wall.txt"
}
run yaml "tasks=[$DATA/yaml/own_arc_letters.yaml]"
run jsonl "tasks=[$DATA/jsonl]"
run instructions "tasks=[$DATA/instructions]"
if [ ! -f "$OUT/experiment-jsonl/report.md" ]; then
  start=$(date +%s)
  .venv/bin/fedcollm experiment --methods zero_shot,fedavg,no_kd,fedcollm,centralized --out "$OUT/experiment-jsonl" \
    "tasks=[$DATA/jsonl]" federation.train_size=40 federation.rounds=1 eval.limit=100 eval.dev_limit=40 \
    precision=fp32 >> "$OUT/experiment-jsonl.log" 2>&1
  echo "experiment-jsonl: $(( $(date +%s) - start )) s wall" >> "$OUT/wall.txt"
fi
