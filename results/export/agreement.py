"""How many questions each scored model answers as the reference does (the per-question predictions of
``fedcollm eval --predictions``): usage  agreement.py REF_DIR DIR...  (prints JSON)."""

from __future__ import annotations

import json
import sys
from pathlib import Path


def predictions(folder: str) -> dict[str, dict]:
    lines = (Path(folder) / "predictions_arc_easy.jsonl").read_text().splitlines()
    return {r["id"]: r for r in map(json.loads, lines)}


def main(ref: str, *others: str) -> dict:
    want = predictions(ref)
    out = {"reference": ref, "n": len(want), "models": {}}
    for folder in others:
        got = predictions(folder)
        if set(got) != set(want):
            raise SystemExit(f"{folder}: other questions than {ref}")
        out["models"][Path(folder).name] = {
            "acc_agree": sum(got[q]["pred"] == r["pred"] for q, r in want.items()),
            "acc_norm_agree": sum(got[q]["pred_norm"] == r["pred_norm"] for q, r in want.items()),
            "max_abs_loglik_diff": max(abs(a - b) for q, r in want.items() for a, b in zip(got[q]["lls"], r["lls"])),
        }
    return out


if __name__ == "__main__":
    print(json.dumps(main(*sys.argv[1:]), indent=1))
