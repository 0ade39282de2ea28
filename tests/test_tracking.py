"""TensorBoard and MLflow tracking, read back from their stores and checked against metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from fedcollm.config import ConfigError, load_config
from fedcollm.recipes.fedcollm import run_fedcollm
from fedcollm.tracking import ROUND, scalars


def _cfg(tiny_models, data_dir, tmp_path, name, *extra):
    return load_config(None, [
        f"llm.name={tiny_models['llm']}", f"slm.name={tiny_models['slm']}", f"data_dir={data_dir}", "precision=fp32",
        f"output_dir={tmp_path}", f"run_name={name}", "federation.rounds=1", "federation.num_clients=2",
        "eval.limit=4", "kd.top_k=16", "tracking=[tensorboard,mlflow]", *extra])


def _tensorboard(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def _mlflow(tmp_path, run_dir):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=f"sqlite:///{tmp_path.resolve()}/mlflow.db")
    run_id = json.loads((run_dir / "tracking.json").read_text())["mlflow_run_id"]
    run = client.get_run(run_id)
    history = {k: [(m.step, m.value) for m in client.get_metric_history(run_id, k)] for k in run.data.metrics}
    return client, run, history


def _expected(run):
    """Every figure of every logged round, as the trackers should hold it: {tag: [(step, value)]}."""
    want: dict[str, list] = {}
    for record in run.metrics():
        for k, v in {**scalars(record), ROUND: record.round}.items():
            want.setdefault(k, []).append((record.round, v))
    return want


def _same(got: dict, want: dict) -> None:
    assert set(got) == set(want), set(got) ^ set(want)
    for tag, points in want.items():
        steps = [s for s, _ in got[tag]]
        assert steps == sorted(set(steps)), f"{tag}: duplicate or unordered steps {steps}"
        assert [s for s, _ in points] == steps, tag
        for (_, a), (_, b) in zip(got[tag], points):
            assert a == pytest.approx(b, rel=1e-6, abs=1e-6), tag  # TensorBoard keeps float32


def test_each_round_reaches_tensorboard_and_mlflow_as_in_metrics_jsonl(tiny_models, data_dir, tmp_path):
    run = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "tracked", "federation.rounds=2",
                            "dp.enabled=true", "dp.noise_multiplier=0.1"), progress=False)
    want = _expected(run)
    # the figures the issue names are all there
    for tag in ("eval/llm/arc_easy/acc", "eval/slm/arc_easy/acc",
                "kd/llm_kl", "kd/slm_kl", "clients/train_loss_mean", "comm/bytes_up_total", "comm/bytes_down_total",
                "seconds/train", "seconds/eval", "server_peak_rss_mb", "privacy/dp/epsilon"):
        assert tag in want, tag
    assert [s for s, _ in want["eval/llm/arc_easy/acc"]] == [0, 1, 2]
    _same(_tensorboard(run.path), want)
    client, mlrun, history = _mlflow(tmp_path, run.path)
    _same(history, want)
    assert mlrun.info.status == "FINISHED" and mlrun.info.run_name == "tracked"
    assert json.loads(mlrun.data.params["federation.rounds"]) == 2 and mlrun.data.params["method"] == '"fedcollm"'
    artifacts = {a.path for a in client.list_artifacts(mlrun.info.run_id)}
    assert {"adapters", "report.md", "config.yaml"} <= artifacts
    adapters = {a.path for a in client.list_artifacts(mlrun.info.run_id, "adapters")}
    assert adapters == {"adapters/theta", "adapters/omega"}


def test_a_resumed_run_appends_to_the_same_runs_without_duplicate_steps(tiny_models, data_dir, tmp_path):
    # round 1 is logged with no tracker at all (as if killed between its checkpoint and the trackers)
    part = run_fedcollm(_cfg(tiny_models, data_dir, tmp_path, "part", "tracking=[]"), progress=False)
    assert not (part.path / "tensorboard").exists()
    run_fedcollm(None, resume=str(part.path), overrides=("federation.rounds=2", "tracking=[tensorboard,mlflow]"),
                 progress=False)
    _, first, _ = _mlflow(tmp_path, part.path)
    resumed = run_fedcollm(None, resume=str(part.path), overrides=("federation.rounds=3",), progress=False)
    want = _expected(resumed)
    assert [s for s, _ in want[ROUND]] == [0, 1, 2, 3]
    _same(_tensorboard(part.path), want)
    _, again, history = _mlflow(tmp_path, part.path)
    assert again.info.run_id == first.info.run_id  # the same MLflow run, reopened
    _same(history, want)
    assert again.data.tags["resumed_with.federation.rounds"] == "3"  # params stay as first logged; tags say more


def test_tracking_names_only_known_backends():
    with pytest.raises(ConfigError, match="tracking = 'wandb' is not one of tensorboard, mlflow"):
        load_config(None, ["tracking=[wandb]"])
    assert load_config(None, ["tracking=[]"]).tracking == []
    assert load_config(None, []).tracking == ["tensorboard"]


def test_a_tracker_without_its_package_is_refused_before_the_run(tiny_models, data_dir, tmp_path, monkeypatch):
    import importlib.util

    from fedcollm.build import preflight

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "mlflow" else real(name, *a))
    cfg = _cfg(tiny_models, data_dir, tmp_path, "nomlflow")
    with pytest.raises(ConfigError, match=r"pip install 'fedcollm\[mlflow\]'"):
        preflight(cfg)
