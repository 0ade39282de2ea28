"""The built-in four through lm-eval's path: every question's request (context, choices, delimiter, gold) as our
built-in prompts build it and as lm-eval's own task classes build it from its own YAML of that task, diffed.

Identical requests score identically, so this is the check that a built-in task keeps its per-question
outcomes whichever path reads it. No model is needed.

    FEDCOLLM_DATA_DIR=../shared/data python bench/builtin_via_lm_eval.py --split test \
        --out results/lm-eval-custom/builtin_requests_test.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def diff(task: str, questions, folder: Path) -> list[str]:
    """Ids of the questions whose requests differ between the two paths."""
    from bench.lm_eval_ref import builtin_as_yaml
    from fedcollm.data import load_eval, mc_request

    theirs = load_eval(str(builtin_as_yaml(task, questions, folder)))
    if len(theirs) != len(questions):
        return [f"{len(theirs)} questions from lm-eval's path, {len(questions)} from ours"]
    return [q.id for q, t in zip(questions, theirs, strict=True) if mc_request(q) != mc_request(t)]


def main() -> None:
    from fedcollm.data import ALL_TASKS, load_eval

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", choices=["dev", "test"], default="test")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()
    result = {"command": f"python bench/builtin_via_lm_eval.py --split {args.split} --out {args.out}", "tasks": {}}
    with tempfile.TemporaryDirectory() as tmp:
        for task in ALL_TASKS:
            qs = load_eval(task, args.data_dir, split=args.split)
            differ = diff(task, qs, Path(tmp) / task)
            result["tasks"][task] = {"questions": len(qs), "requests_differ": len(differ), "ids": differ[:20]}
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
