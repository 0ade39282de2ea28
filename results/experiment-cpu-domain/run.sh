#!/usr/bin/env bash
# The setting where the clients know what the server does not: `--preset cpu-domain` (the preset says who holds
# what). Run from the repository root: bash results/experiment-cpu-domain/run.sh
# Step 1 (dev, test sealed): no_kd and centralized, so the split can be checked against the rule in README.md
# before anything else is spent on it. Step 2 (only once README.md records that the rule holds): every method on
# dev, then the test scoring of all of them (the same folder again without --dev-only retrains nothing).
# A finished method is skipped and a killed one continues after its last finished round; each call's wall time
# goes to wall.txt.
set -euo pipefail
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
OUT=results/experiment-cpu-domain
start=$(date +%s)
trap 'echo "$(date -u +%Y-%m-%dT%H:%MZ) call ended (exit $?): $(( $(date +%s) - start )) s wall" >> "$OUT/wall.txt"' EXIT
.venv/bin/fedcollm experiment --preset cpu-domain --methods zero_shot,no_kd,centralized --dev-only --out "$OUT" \
  >> "$OUT/experiment.log" 2>&1
if grep -q "^RULE HOLDS" "$OUT/README.md"; then
  .venv/bin/fedcollm experiment --preset cpu-domain --methods zero_shot,no_kd,centralized,fedavg,fedcollm --dev-only \
    --out "$OUT" >> "$OUT/experiment.log" 2>&1
  .venv/bin/fedcollm experiment --preset cpu-domain --methods zero_shot,no_kd,centralized,fedavg,fedcollm \
    --out "$OUT" >> "$OUT/experiment.log" 2>&1
fi
