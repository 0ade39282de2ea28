"""Our scorer vs lm-evaluation-harness on a real model: same predictions? how much faster?

A thin command over ``bench.eval_scorer.compare`` (benchmark 1 of ``python -m bench``): both run in this
one process on the same model folder, questions, batch size and dtype; the JSON written holds
per-question agreement, accuracies, wall and CPU times and their ratios.

    python bench/scorer_vs_lm_eval.py --model qwen2.5-coder-0.5b-instruct --task arc_easy --limit 200 \
        --dtype float32 --out results/scorer_vs_lm_eval_arc_easy_fp32.json
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    from bench.common import machine
    from bench.eval_scorer import compare

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--reps", type=int, default=1)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    result = {
        "command": "python bench/scorer_vs_lm_eval.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        **compare(args.model, args.task, args.limit, args.batch_size, args.dtype, args.data_dir, args.reps),
        "machine": machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
