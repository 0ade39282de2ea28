"""Our scorer vs lm-evaluation-harness on a real model: same predictions? how much faster?

Both run in this one process on the same model folder, questions, batch size and dtype, one after the
other; the JSON written holds per-question agreement, accuracies, wall times and their ratio.

    python bench/scorer_vs_lm_eval.py --model qwen2.5-coder-0.5b-instruct --task arc_easy --limit 200 \
        --dtype float32 --out results/scorer_vs_lm_eval_fp32.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import torch


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b-instruct")
    p.add_argument("--task", default="arc_easy")
    p.add_argument("--limit", type=int, default=200)
    p.add_argument("--batch-size", type=int, default=8)
    p.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    args = p.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer

    from fedcollm.data import load_eval
    from fedcollm.evaluate import accuracy, score_questions
    from fedcollm.lm_eval_ref import run_lm_eval
    from fedcollm.models.sources import resolve_model

    path = resolve_model(args.model)
    questions = load_eval(args.task, args.data_dir, args.limit)
    dtype = getattr(torch, args.dtype)

    # lm-eval's timing covers simple_evaluate (task setup + scoring); model loading is outside both timings
    ref_metrics, ref_samples, timing = run_lm_eval(path, {args.task: questions}, args.batch_size, args.dtype)
    ref_seconds, ref_cpu = timing["wall"], timing["cpu"]

    model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype).eval()
    tok = AutoTokenizer.from_pretrained(path)
    t0, c0 = time.perf_counter(), time.process_time()
    ours = score_questions(model, tok, questions, batch_size=args.batch_size, max_length=2048)
    our_seconds, our_cpu = time.perf_counter() - t0, time.process_time() - c0

    ref = ref_samples[args.task]
    same_acc = sum(float(r.pred == r.gold) == s["acc"] for r, s in zip(ours, ref, strict=True))
    same_norm = sum(float(r.pred_norm == r.gold) == s["acc_norm"] for r, s in zip(ours, ref, strict=True))
    max_ll_diff = max(abs(a - b) for r, s in zip(ours, ref, strict=True) for a, b in zip(r.lls, s["lls"], strict=True))
    result = {
        "command": "python bench/scorer_vs_lm_eval.py " + " ".join(
            f"--{k.replace('_', '-')} {v}" for k, v in vars(args).items() if v is not None),
        "model": args.model, "task": args.task, "questions": len(questions), "batch_size": args.batch_size,
        "dtype": args.dtype,
        "lm_eval": {**ref_metrics[args.task], "seconds": round(ref_seconds, 2), "cpu_seconds": round(ref_cpu, 2)},
        "ours": {**accuracy(ours), "seconds": round(our_seconds, 2), "cpu_seconds": round(our_cpu, 2)},
        "agreement": {"acc_per_question": f"{same_acc}/{len(ours)}",
                      "acc_norm_per_question": f"{same_norm}/{len(ours)}",
                      "max_abs_loglikelihood_diff": max_ll_diff},
        "speedup": round(ref_seconds / our_seconds, 2),
        # CPU time is the steadier figure on a shared VM: wall time moves with other load, work does not
        "speedup_cpu_time": round(ref_cpu / our_cpu, 2),
        "machine": {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
                    "platform": platform.platform(), "torch": torch.__version__},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
