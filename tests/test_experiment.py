"""The whole experiment at toy size: every method and task in the report; reruns skip; failures isolate."""

from __future__ import annotations

import pytest

from fedcollm.config import ConfigError, load_config
from fedcollm.recipes import experiment


def test_toy_experiment_report_has_every_method_and_task(tiny_models, data_dir, tmp_path, monkeypatch):
    overrides = [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        "federation.num_clients=2", "federation.rounds=1", "federation.client_size=4", "federation.aux_size=2",
        "tasks=arc_easy,commonsense_qa", "eval.limit=3", "kd.top_k=8", "tracking=[tensorboard,mlflow]"]
    cfg = load_config(None, overrides)

    def broken(cfg, out):
        raise RuntimeError("boom")

    monkeypatch.setitem(experiment.RUNNERS, "centralized", broken)
    out = experiment.run_experiment(cfg, tmp_path / "exp")
    assert (out / "methods" / "centralized.error").is_file()  # the failure is kept ...
    assert {p.stem for p in (out / "methods").glob("*.json")} == set(experiment.METHODS) - {"centralized"}  # ... alone
    assert experiment.failed_methods(out) == ["centralized"]  # what makes `fedcollm experiment` exit 1
    monkeypatch.undo()
    stamp = (out / "methods" / "fedcollm.json").stat().st_mtime_ns
    experiment.run_experiment(cfg, out)  # rerun: only the failed method runs again
    assert (out / "methods" / "fedcollm.json").stat().st_mtime_ns == stamp
    assert not (out / "methods" / "centralized.error").exists() and experiment.failed_methods(out) == []
    report_before = (out / "report.md").read_text()
    other = load_config(None, [*overrides, "seed=1", "federation.rounds=2"])
    with pytest.raises(ConfigError, match=r"another config \(differs in seed, federation.rounds\)"):
        experiment.run_experiment(other, out)  # a changed config must not be mixed with finished methods
    assert (out / "report.md").read_text() == report_before
    report = (out / "report.md").read_text()
    for table in ("Table 1", "Table 2", "Table 3"):
        assert table in report
    for task in ("ARC-E", "CQA"):
        row1 = next(line for line in report.splitlines() if line.startswith(f"| {task} |") and line.count("|") == 6)
        assert "-" not in row1.split("|")[2:5]  # Zero-Shot, Centralized, FedCoLLM all present
        row2 = [line for line in report.splitlines() if line.startswith(f"| {task} |") and line.count("|") == 7][0]
        assert "-" not in row2.split("|")[2:6]  # Zero-Shot, Standalone, FedAvg, FedCoLLM
    csv_rows = (out / "results.csv").read_text().splitlines()
    assert {r.split(",")[0] for r in csv_rows[1:]} == set(experiment.METHODS)
    assert (out / "accuracy_per_round.png").stat().st_size > 1000
    assert (out / "bytes_per_round.png").stat().st_size > 1000
    claims = [line for line in report.splitlines() if line.startswith("| LLM: ") or line.startswith("| SLM: ")]
    for claim in ("LLM: fedcollm > zero_shot", "LLM: fedcollm ≈ centralized", "SLM: fedcollm > fedavg",
                  "SLM: fedcollm > standalone"):
        rows = [line for line in claims if line.startswith(f"| {claim} |")]
        assert {r.split("|")[2].strip() for r in rows} == {"ARC-E", "CQA", "**all**"}, claim
        assert all(r.split("|")[3].strip() in ("3", "6") for r in rows)  # n questions, pooled = 6

    # MLflow: one parent run for the experiment, one child run per method (the federated ones per round)
    import json

    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{out.resolve()}/mlflow.db")
    parent_id = json.loads((out / "tracking.json").read_text())["mlflow_run_id"]
    parent = client.get_run(parent_id)
    assert parent.info.status == "FINISHED" and "report.md" in {a.path for a in client.list_artifacts(parent_id)}
    runs = client.search_runs([parent.info.experiment_id])
    children = {r.info.run_name: r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id}
    assert set(children) == set(experiment.METHODS) and len(runs) == len(experiment.METHODS) + 1
    assert children["fedcollm"].data.metrics["eval/llm/arc_easy/acc"] == pytest.approx(
        json.loads((out / "methods" / "fedcollm.json").read_text())["llm"]["arc_easy"]["acc"])
    assert "eval/slm/commonsense_qa/acc" in children["standalone"].data.metrics
    assert (out / "runs" / "fedcollm" / "tensorboard").is_dir()
    assert (out / "methods" / "zero_shot.tracking" / "tensorboard").is_dir()
