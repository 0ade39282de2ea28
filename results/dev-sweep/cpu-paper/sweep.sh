#!/usr/bin/env bash
# The cpu-paper preset's transfer chosen on dev: one `fedcollm experiment --dev-only` folder per KD variant,
# the test splits sealed for the whole sweep (FEDCOLLM_SEAL_TEST=1, and --dev-only seals every command too).
# Budget (README here says why): cpu-paper with 500 training questions per task (train_size), so D^a = 100
# per task (400) and 400 per task dealt to K = 4 clients (1,600): D^a : D^k stays 1 : 4; T = 3 rounds;
# dev = the first 150 questions of each task (600), scored after the last round only (no choice reads
# the other rounds). Zero-Shot is scored once, in the first folder. The variants differ only in the
# server's KD, so their round-1 client updates are equal: federation.update_cache computes them once.
# Padded batches (packing=false) in every variant, as the first one ran, whatever the preset says.
# Run from the repository root: bash results/dev-sweep/cpu-paper/sweep.sh  (a finished variant is skipped; a
# killed one continues after its last finished round).
set -euo pipefail
export FEDCOLLM_SEAL_TEST=1
export FEDCOLLM_DATA_DIR=${FEDCOLLM_DATA_DIR:-../shared/data}
OUT=results/dev-sweep/cpu-paper
COMMON="federation.train_size=500 eval.every_round=false packing=false federation.update_cache=$OUT/update-cache"
# The second block (issue 27): the transfer over the answer choices (kd.target=choices, README "KD losses"),
# with the LLM direction off (the first block's winner) at tau 1 and 2, and with it gated (weight 1, select=gated).
# The preset now holds the first block's winner (kd.llm_weight=0): each variant states every kd knob it sets.
declare -A VARIANTS=(
  [paper]=""
  [llm-weight-0]="kd.llm_weight=0"
  [select-greater]="kd.select=greater"
  [select-gated]="kd.select=gated"
  [choices-llm-0]="kd.target=choices kd.llm_weight=0 kd.temperature=1"
  [choices-llm-0-t2]="kd.target=choices kd.llm_weight=0 kd.temperature=2"
  [choices-gated]="kd.target=choices kd.llm_weight=1 kd.select=gated kd.temperature=1"
  # The third block (issue 27): the clients' own local step, FedAvg alone (no server, no KD), on the gold
  # answer's tokens (today's) or over the answer choices (rank classification): a knob every method would get.
  [fedavg-tokens]="train.objective=tokens"
  [fedavg-choices]="train.objective=choices"
)
declare -A METHODS=([paper]="zero_shot,fedcollm" [fedavg-tokens]="fedavg" [fedavg-choices]="fedavg")
for name in ${NAMES:-paper llm-weight-0 select-greater select-gated choices-llm-0 choices-gated choices-llm-0-t2 \
                  fedavg-tokens fedavg-choices}; do
  methods=${METHODS[$name]:-fedcollm}
  [ -f "$OUT/$name/methods/${methods##*,}.dev.json" ] && continue
  start=$(date +%s)
  # shellcheck disable=SC2086
  .venv/bin/fedcollm experiment --preset cpu-paper --methods "$methods" --dev-only \
    --out "$OUT/$name" $COMMON ${VARIANTS[$name]} >> "$OUT/$name.log" 2>&1
  echo "$name: $(( $(date +%s) - start )) s wall (this call; a resumed variant has several lines)" >> "$OUT/wall.txt"
done
