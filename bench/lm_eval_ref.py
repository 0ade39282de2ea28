"""lm-evaluation-harness as an oracle for our scorer, offline.

lm-eval's task YAMLs point at the HF hub, which may be unreachable. We load the installed lm-eval's own
YAML for each task, keep its prompt/choice/target/metric definitions untouched, and only swap the
dataset for a local JSON file written in the hub's layout from our questions. Used by the agreement
tests, the comparison script and the benchmark.
"""

from __future__ import annotations

import json
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import yaml

from fedcollm.data import Question

_YAML = {
    "arc_easy": "arc/arc_easy.yaml",
    "arc_challenge": "arc/arc_challenge.yaml",
    "openbookqa": "openbookqa/openbookqa.yaml",
    "commonsense_qa": "commonsense_qa/default.yaml",
}


def _hub_layout(q: Question) -> dict:
    choices = {"label": list(q.labels), "text": list(q.choices)}
    key = q.labels[q.answer]
    if q.task == "openbookqa":
        return {"id": q.id, "question_stem": q.question, "choices": choices, "answerKey": key}
    return {"id": q.id, "question": q.question, "choices": choices, "answerKey": key}


def task_config(task: str, data_file: Path) -> dict:
    """lm-eval's YAML for ``task`` with the dataset pointed at a local JSON file."""
    import lm_eval

    root = Path(lm_eval.__file__).parent / "tasks"
    path = root / _YAML[task]
    cfg = yaml.safe_load(path.read_text())
    while "include" in cfg:  # arc_challenge includes arc_easy
        base = yaml.safe_load((path.parent / cfg.pop("include")).read_text())
        cfg = {**base, **cfg}
    for key in ("tag", "group", "training_split", "validation_split", "test_split", "dataset_name",
                "fewshot_split"):
        cfg.pop(key, None)
    cfg.update(task=f"fedcollm_ref_{task}", dataset_path="json",
               dataset_kwargs={"data_files": {"test": str(data_file)}}, test_split="test")
    return cfg


def run_lm_eval(
    model_dir: str, questions: dict[str, Sequence[Question]], batch_size: int = 8, dtype: str = "float32",
) -> tuple[dict[str, dict[str, float]], dict[str, list[dict]], dict[str, float]]:
    """Run lm-eval's HF model on our questions: (metrics per task, per-question lls/acc/acc_norm, timing).

    ``timing`` holds wall and CPU seconds of ``simple_evaluate`` alone (model loading excluded).
    """
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    with tempfile.TemporaryDirectory() as tmp:
        for task, qs in questions.items():
            data = Path(tmp) / f"{task}.json"
            data.write_text("".join(json.dumps(_hub_layout(q)) + "\n" for q in qs))
            (Path(tmp) / f"{task}.yaml").write_text(yaml.safe_dump(task_config(task, data)))
        lm = HFLM(pretrained=model_dir, batch_size=batch_size, dtype=dtype, device="cpu")
        t0, c0 = time.perf_counter(), time.process_time()
        out = lm_eval.simple_evaluate(
            model=lm, tasks=[f"fedcollm_ref_{t}" for t in questions], task_manager=TaskManager(include_path=tmp),
            log_samples=True, num_fewshot=0, bootstrap_iters=0,
        )
        timing = {"wall": time.perf_counter() - t0, "cpu": time.process_time() - c0}
    metrics, samples = {}, {}
    for task in questions:
        name = f"fedcollm_ref_{task}"
        res = out["results"][name]
        metrics[task] = {k.split(",")[0]: v for k, v in res.items() if k in ("acc,none", "acc_norm,none")}
        samples[task] = [
            {"lls": [float(r[0]) for r in s["filtered_resps"]], "acc": s["acc"], "acc_norm": s.get("acc_norm")}
            for s in sorted(out["samples"][name], key=lambda s: s["doc_id"])
        ]
    return metrics, samples, timing


def run_lm_eval_tasks(model_dir: str, specs: Sequence[str], batch_size: int = 8, dtype: str = "float32",
                      limit: int | None = None) -> dict[str, list[dict]]:
    """lm-eval's own run of tasks named by YAML path or name, unchanged: per task name, each scored document's
    lls, acc and acc_norm in document order."""
    import lm_eval
    from lm_eval.models.huggingface import HFLM
    from lm_eval.tasks import TaskManager

    lm = HFLM(pretrained=model_dir, batch_size=batch_size, dtype=dtype, device="cpu")
    manager = TaskManager(include_defaults=not all(s.endswith(".yaml") for s in specs))  # paths: no index needed
    out = lm_eval.simple_evaluate(model=lm, tasks=list(specs), log_samples=True, task_manager=manager,
                                  bootstrap_iters=0, limit=limit)
    return {name: [{"lls": [float(r[0]) for r in s["filtered_resps"]], "acc": s["acc"], "acc_norm": s.get("acc_norm")}
                   for s in sorted(samples, key=lambda s: s["doc_id"])]
            for name, samples in out["samples"].items()}


def builtin_as_yaml(task: str, questions: Sequence[Question], folder: Path) -> Path:
    """A task YAML for a built-in task: lm-eval's own definition of it (``task_config``) over ``questions``
    written in the hub's layout, so that lm-eval's path (``fedcollm.data.lm_eval_task``) can be diffed with ours."""
    folder.mkdir(parents=True, exist_ok=True)
    data = folder / f"{task}.json"
    data.write_text("".join(json.dumps(_hub_layout(q)) + "\n" for q in questions))
    cfg = task_config(task, data)
    cfg["task"] = f"fedcollm_builtin_{task}"
    path = folder / f"{task}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path
