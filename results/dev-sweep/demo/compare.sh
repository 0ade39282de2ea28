#!/usr/bin/env bash
# Every variant's last round against the base models (round 0 of the paper run: the same 100 dev questions)
# and against the paper's transfer, per model, with `fedcollm compare` (paired bootstrap, McNemar).
# Run from the repository root after sweep.sh: bash results/dev-sweep/demo/compare.sh > results/dev-sweep/demo/compare.txt
set -euo pipefail
OUT=results/dev-sweep/demo
python3 - "$OUT" <<'PY'
import json, sys
from pathlib import Path
out = Path(sys.argv[1])
zero = json.loads((out / "paper" / "metrics.jsonl").read_text().splitlines()[0])
assert zero["round"] == 0
(out / "zero-shot.dev.json").write_text(json.dumps(zero["eval"], indent=1) + "\n")
PY
for v in paper select-greater llm-weight-0 convex-0.1; do
  for role in llm slm; do
    .venv/bin/fedcollm compare "$OUT/$v:$role" "$OUT/zero-shot.dev.json:$role" --out "$OUT/$v/vs-zero-shot-$role.json"
    [ "$v" = paper ] || .venv/bin/fedcollm compare "$OUT/$v:$role" "$OUT/paper:$role" --out "$OUT/$v/vs-paper-$role.json"
  done
done
