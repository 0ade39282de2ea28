#!/usr/bin/env bash
# The paper's experiment at its data proportions: `--preset cpu-paper` (its transfer chosen on dev in
# results/dev-sweep/cpu-paper/), the paper's four baselines plus no_kd and the paper's own transfer.
# Run from the repository root: bash results/experiment-cpu-paper/run.sh
# A finished method is skipped and a killed one continues after its last finished round, so this is run
# again, session after session, until the report is whole. Each call's wall time goes to wall.txt
# (written on exit, a killed call included); machine.json has the CPU, its flags and the precision.
set -euo pipefail
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
OUT=results/experiment-cpu-paper
METHODS=zero_shot,fedavg,fedcollm,no_kd,standalone,centralized,fedcollm_paper  # the main claims' methods first
start=$(date +%s)
trap 'echo "$(date -u +%Y-%m-%dT%H:%MZ) call ended (exit $?): $(( $(date +%s) - start )) s wall" >> "$OUT/wall.txt"' EXIT
.venv/bin/fedcollm experiment --preset cpu-paper --methods "$METHODS" --out "$OUT" >> "$OUT/experiment.log" 2>&1
