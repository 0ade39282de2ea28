"""A custom task in lm-eval's YAML format, on a real model: our scorer's predictions vs lm-eval's own run.

The task is a private-data YAML as a user would write it: ``dataset_path: json`` over a local file, a jinja
prompt over several fields with the choices as letters, a description. Its data is the first ``--limit``
questions of a built-in task's dev split, written to a scratch folder in the layout the YAML reads (never
committed). lm-eval runs the YAML unchanged (its HF model, ``simple_evaluate``); we load the same YAML through
``fedcollm.data`` and score it with ``score_questions``, in one process, same model folder and dtype.

    python bench/custom_task_vs_lm_eval.py --model qwen2.5-coder-0.5b-instruct --source arc_challenge \
        --limit 200 --out results/lm-eval-custom/arc_challenge_letters_0.5b.json
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

if __package__ in (None, ""):  # run as a script: make the ``bench`` package importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

YAML = """task: private_letters
dataset_path: json
dataset_kwargs:
  data_files:
    test: {data}
output_type: multiple_choice
test_split: test
description: "The following are multiple choice questions about {{{{subject}}}}.\\n\\n"
doc_to_text: "{{{{question.strip()}}}}\\n{{% for c in options %}}\\
  {{{{'ABCDEFGH'[loop.index0]}}}}. {{{{c}}}}\\n{{% endfor %}}Answer:"
doc_to_choice: "{{{{['A', 'B', 'C', 'D', 'E', 'F', 'G', 'H'][:options|length]}}}}"
doc_to_target: gold
metric_list:
  - {{metric: acc, aggregation: mean, higher_is_better: true}}
"""


def main() -> None:
    import torch

    from bench.common import machine
    from bench.lm_eval_ref import run_lm_eval_tasks
    from fedcollm.data import load_eval
    from fedcollm.evaluate import accuracy, score_questions
    from fedcollm.models.sources import load_model, resolve_model

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--source", default="arc_challenge", help="the built-in task whose dev questions are the data")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    source = load_eval(args.source, args.data_dir, limit=args.limit, split="dev")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "private.json"
        data.write_text("".join(json.dumps({"id": q.id, "subject": args.source.replace("_", " "),
                                            "question": q.question, "options": list(q.choices),
                                            "gold": q.answer}) + "\n" for q in source))
        yaml = Path(tmp) / "private_letters.yaml"
        yaml.write_text(YAML.format(data=data))
        model_dir = resolve_model(args.model)
        t0 = time.perf_counter()
        theirs = run_lm_eval_tasks(model_dir, [str(yaml)], args.batch_size, args.dtype)["private_letters"]
        t_theirs = time.perf_counter() - t0
        questions = load_eval(str(yaml))
        model, tok = load_model(args.model, dtype=getattr(torch, args.dtype))
        t0 = time.perf_counter()
        ours = score_questions(model.eval(), tok, questions, batch_size=args.batch_size)
        t_ours = time.perf_counter() - t0
    same = [float(r.pred == r.gold) == s["acc"] for r, s in zip(ours, theirs, strict=True)]
    differ = [{"id": q.id, "ours_lls": r.lls, "lm_eval_lls": s["lls"]}
              for q, r, s, ok in zip(questions, ours, theirs, same) if not ok]
    result = {
        "command": "python bench/custom_task_vs_lm_eval.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "yaml": YAML.format(data="<scratch>/private.json"),
        "questions": len(questions),
        "same_outcome": sum(same),
        "max_abs_ll_diff": max(abs(a - b) for r, s in zip(ours, theirs) for a, b in zip(r.lls, s["lls"])),
        "acc": {"ours": accuracy(ours)["acc"], "lm_eval": sum(s["acc"] for s in theirs) / len(theirs)},
        "seconds": {"ours": round(t_ours, 1), "lm_eval_simple_evaluate": round(t_theirs, 1)},
        "differ": differ,
        "machine": machine(),
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps({k: v for k, v in result.items() if k != "yaml"}, indent=2))


if __name__ == "__main__":
    main()
