"""Benchmark 1, evaluation: our scorer vs lm-evaluation-harness's HF model, same model, questions, batch.

Both arms load the weights in the same dtype from the same folder and neither autocasts, so every
matmul runs in that dtype in both. lm-eval's time is ``simple_evaluate`` (task setup, tokenization,
scoring; model loading excluded, see ``bench.lm_eval_ref``); ours is ``score_questions``
(tokenization and scoring). Each arm runs once on a few questions first (warm-up), then the two
alternate ``reps`` times. Targets: identical accuracy (acc and acc_norm) and ≥ 3× faster.

lm-eval's HF model is run on the CPU by ``run_lm_eval``, so on a GPU machine both arms stay on the CPU.
"""

from __future__ import annotations

import time

import torch

from bench.common import Setup, profile_top_ops, row, summarize

NAME = "eval"
TARGET_SPEEDUP = 3.0
DTYPES = {"bf16": "bfloat16", "fp32": "float32"}


def compare(model: str, task: str = "arc_easy", limit: int = 100, batch_size: int = 8, dtype: str = "bfloat16",
            data_dir: str | None = None, reps: int = 1, warmup_questions: int = 4, profile_below: float = 0.0) -> dict:
    """Per-question agreement, accuracies, wall/CPU seconds of both arms and the speed-ups.

    The dict keeps the layout of ``results/scorer_vs_lm_eval_*.json`` (bench/scorer_vs_lm_eval.py). When the
    wall-time speed-up is below ``profile_below`` it also holds a profile of our scorer (``profile_ours``).
    """
    from bench.lm_eval_ref import run_lm_eval
    from fedcollm.data import load_eval
    from fedcollm.evaluate import accuracy, score_questions
    from fedcollm.models.sources import load_model, resolve_model

    path = resolve_model(model)
    questions = load_eval(task, data_dir, limit)
    ours_model, tok = load_model(model, dtype=getattr(torch, dtype))

    def ours(qs):
        return score_questions(ours_model, tok, qs, batch_size=batch_size, max_length=2048)

    if warmup_questions:
        run_lm_eval(path, {task: questions[:warmup_questions]}, batch_size, dtype)
        ours(questions[:warmup_questions])
    ref_wall, ref_cpu, our_wall, our_cpu = [], [], [], []
    for r in range(reps):  # alternate which arm goes first
        for arm in ("lm_eval", "ours") if r % 2 == 0 else ("ours", "lm_eval"):
            if arm == "lm_eval":
                ref_metrics, ref_samples, timing = run_lm_eval(path, {task: questions}, batch_size, dtype)
                ref_wall.append(timing["wall"])
                ref_cpu.append(timing["cpu"])
            else:
                t0, c0 = time.perf_counter(), time.process_time()
                results = ours(questions)
                our_wall.append(time.perf_counter() - t0)
                our_cpu.append(time.process_time() - c0)
    ref_t, our_t = summarize(ref_wall, ref_cpu), summarize(our_wall, our_cpu)
    ref = ref_samples[task]
    same_acc = sum(float(r.pred == r.gold) == s["acc"] for r, s in zip(results, ref, strict=True))
    same_norm = sum(float(r.pred_norm == r.gold) == s["acc_norm"] for r, s in zip(results, ref, strict=True))
    max_diff = max(abs(a - b) for r, s in zip(results, ref, strict=True) for a, b in zip(r.lls, s["lls"], strict=True))
    acc = accuracy(results)
    differ = [{"id": r.id, "gold": r.gold, "ours_lls": r.lls, "lm_eval_lls": s["lls"],
               "ours_top2_margin": _margin(r.lls), "lm_eval_top2_margin": _margin(s["lls"])}
              for r, s in zip(results, ref) if float(r.pred == r.gold) != s["acc"]
              or float(r.pred_norm == r.gold) != s["acc_norm"]]
    out = {
        "model": model, "task": task, "questions": len(questions), "batch_size": batch_size, "dtype": dtype,
        "reps": reps,
        "lm_eval": {**ref_metrics[task], "seconds": round(ref_t["median_s"], 2),
                    "cpu_seconds": round(ref_t["cpu_median_s"], 2), "runs_s": ref_t["runs_s"]},
        "ours": {**{k: acc[k] for k in ("acc", "acc_norm", "n")}, "seconds": round(our_t["median_s"], 2),
                 "cpu_seconds": round(our_t["cpu_median_s"], 2), "runs_s": our_t["runs_s"]},
        "agreement": {"acc_per_question": f"{same_acc}/{len(results)}",
                      "acc_norm_per_question": f"{same_norm}/{len(results)}",
                      "max_abs_loglikelihood_diff": max_diff, "questions_that_differ": differ},
        "speedup": round(ref_t["median_s"] / our_t["median_s"], 2),
        # CPU time is the steadier figure on a shared VM: wall time moves with other load, work does not
        "speedup_cpu_time": round(ref_t["cpu_median_s"] / our_t["cpu_median_s"], 2),
    }
    if out["speedup"] < profile_below:
        out["profile_ours"] = profile_top_ops(lambda: ours(questions[: 2 * batch_size]))
    return out


def _margin(lls: list[float]) -> float:
    """Log-likelihood gap between the best and the second-best choice (how close the question is to a tie)."""
    top = sorted(lls, reverse=True)
    return top[0] - top[1] if len(top) > 1 else float("inf")


def run(setup: Setup, limit: int | None = None, batch_size: int = 8, reps: int | None = None,
        warmup_questions: int | None = None, fp32_check: bool | None = None) -> dict:
    """The eval benchmark on ``setup.slm`` in the run's precision (bf16 where the CPU has fast bf16).

    bf16 rounds the two arms' hidden states differently (one packed row vs one sequence per choice), so a
    question whose best two choices are nearly tied can flip; unless ``--quick``, the same comparison is
    also run in fp32 (once), where the two must agree on every question.
    """
    limit = limit or (8 if setup.quick else 100)
    reps = reps or (1 if setup.quick else 2)
    dtype = DTYPES[setup.precision_name()]
    warmup = (2 if setup.quick else 4) if warmup_questions is None else warmup_questions
    data_dir = setup.config().data_dir
    runs = {dtype: compare(setup.slm, setup.task, limit, batch_size, dtype, data_dir, reps, warmup, TARGET_SPEEDUP)}
    if (not setup.quick if fp32_check is None else fp32_check) and dtype != "float32":
        runs["float32"] = compare(setup.slm, setup.task, limit, batch_size, "float32", data_dir, 1, warmup)
    rows = []
    for dt, res in runs.items():
        ours, ref = res["ours"], res["lm_eval"]
        n = f"{res['questions']} {setup.task} q, {dt}"
        rows += [
            row(NAME, f"acc ({n})", ours["acc"], ref["acc"], _same(ours["acc"], ref["acc"]), ("==", 1.0)),
            row(NAME, f"acc_norm ({n})", ours["acc_norm"], ref.get("acc_norm"),
                _same(ours["acc_norm"], ref.get("acc_norm")), ("==", 1.0)),
            row(NAME, "  same outcome per question (acc / acc_norm)", res["agreement"]["acc_per_question"],
                res["agreement"]["acc_norm_per_question"]),
            row(NAME, f"  wall s (batch {batch_size}, {dt}, reps {res['reps']})", ours["seconds"], ref["seconds"],
                res["speedup"], (">=", TARGET_SPEEDUP), "s"),
            row(NAME, "  CPU s of this process", ours["cpu_seconds"], ref["cpu_seconds"], res["speedup_cpu_time"],
                None, "s"),
        ]
    return {"rows": rows, "figures": runs}


def _same(a: float, b: float | None) -> float:
    """1.0 when the two accuracies are equal (the table's ratio column for an "identical" target)."""
    return 1.0 if b is not None and a == b else 0.0
