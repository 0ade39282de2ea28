"""Experiment tracking: every round's figures to TensorBoard and/or MLflow, both on local disk.

``tracking: [tensorboard, mlflow]`` in the config picks either, both or none (default tensorboard).

- TensorBoard: event files in ``RUN_DIR/tensorboard/`` (``tensorboard --logdir runs/``).
- MLflow: a store on local disk, the SQLite file this MLflow version recommends (``mlflow.uri``, default
  ``sqlite:///OUTPUT_DIR/mlflow.db``, artifacts beside it in ``mlartifacts/``; ``mlflow ui
  --backend-store-uri sqlite:///runs/mlflow.db``). One MLflow run per run folder, its id kept in
  ``RUN_DIR/tracking.json``; the resolved config as params, each round's figures as metrics, the final
  adapters, report and plots as artifacts. ``mlflow.parent_run`` nests it under another run (what
  ``fedcollm experiment`` does: one parent run, one child per method).

``metrics.jsonl`` stays the record of truth; trackers are views of it. A round reaches them only after
its checkpoint is complete, and ``sync`` logs exactly the logged rounds a tracker does not have yet
(its last step is read back from the store), so a resumed run appends to the same TensorBoard and
MLflow run without duplicate steps, and a kill between the checkpoint and the tracker loses nothing.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path

from .config import Config, to_dict
from .rounds import RoundRecord

log = logging.getLogger(__name__)
ROUND = "round"  # logged last at every step: the step a tracker has completely


def flat(values: dict) -> dict[str, float]:
    """Every number in nested ``values``, keyed by its path (``eval/llm/arc_easy/acc``)."""
    out: dict[str, float] = {}

    def walk(prefix: str, value) -> None:
        if isinstance(value, (int, float)):  # bools too: secure_aggregation 0/1
            out[prefix] = float(value)
        elif isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)

    walk("", values)
    return out


def scalars(record: RoundRecord) -> dict[str, float]:
    """A round's figures, flat: every number in the record (``eval/llm/arc_easy/acc``, ``kd/slm_kl``,
    ``seconds/train``, ``privacy/dp/epsilon``...) plus summaries of its per-client lists."""
    out = flat({k: v for k, v in record.to_json().items() if k not in ("clients", "comm", ROUND)})
    clients = record.clients or {}
    contributors = clients.get("contributors", [])
    if clients:
        out["clients/contributors"] = float(len(contributors))
        out["clients/dropped"] = float(len(clients.get("dropped", [])))
        out["clients/rejected"] = float(len(clients.get("rejected", [])))
    losses = [c["train-loss"] for c in contributors if "train-loss" in c]
    if losses:
        out["clients/train_loss_mean"] = sum(losses) / len(losses)
        out["clients/train_loss_max"] = max(losses)
    rss = [c["worker-peak-rss-mb"] for c in contributors if "worker-peak-rss-mb" in c]
    if rss:
        out["clients/worker_peak_rss_mb"] = float(max(rss))
    for way, name in (("sent", "down"), ("received", "up")):
        sizes = record.comm.per_client(way) if record.comm else []
        if sizes:
            out[f"comm/bytes_{name}_total"] = float(sum(sizes))
            out[f"comm/bytes_{name}_per_client"] = float(sum(sizes) / len(sizes))
    return out


def flat_config(cfg: Config) -> dict[str, str]:
    """The resolved config as ``section.key`` → text (MLflow params, TensorBoard text)."""
    out: dict[str, str] = {}

    def walk(prefix: str, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                walk(f"{prefix}{k}.", v)
            else:
                out[f"{prefix}{k}"] = json.dumps(v)

    walk("", to_dict(cfg))
    return out


class TensorBoard:
    """Event files in ``RUN_DIR/tensorboard`` (torch's SummaryWriter; read back with tensorboard's EventAccumulator)."""

    def __init__(self, run_dir: Path, cfg: Config, name: str | None = None) -> None:  # name: MLflow's only
        from torch.utils.tensorboard import SummaryWriter

        self.dir = run_dir / "tensorboard"
        fresh = not self.dir.exists()
        self.last = -1 if fresh else last_tensorboard_step(self.dir)
        self.writer = SummaryWriter(log_dir=str(self.dir))
        if fresh:
            text = "\n".join(f"    {k}: {v}" for k, v in flat_config(cfg).items())  # indented: markdown code
            self.writer.add_text("config", text, 0)

    def log(self, step: int, values: dict[str, float]) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.add_scalar(ROUND, step, step)
        self.writer.flush()

    def finish(self, run_dir: Path) -> None:
        self.writer.close()


def last_tensorboard_step(log_dir: Path) -> int:
    """The last step whose ``round`` scalar is in the event files (-1 when none)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    if ROUND not in acc.Tags().get("scalars", []):
        return -1
    return max(int(e.step) for e in acc.Scalars(ROUND))


def mlflow_uri(cfg: Config, folder: str | Path | None = None) -> str:
    """``mlflow.uri``, or a SQLite file (MLflow 3's recommended local store) in ``folder``, by default
    ``output_dir``: an experiment passes its own folder so that all its methods share one store."""
    return cfg.mlflow.uri or f"sqlite:///{(Path(folder or cfg.output_dir) / 'mlflow.db').resolve()}"


def mlflow_experiment(client, cfg: Config) -> str:
    """The id of ``mlflow.experiment`` in the store, created with its artifacts beside a SQLite store."""
    found = client.get_experiment_by_name(cfg.mlflow.experiment)
    if found is not None:
        return found.experiment_id
    uri = mlflow_uri(cfg)
    beside = uri.startswith("sqlite:///")
    where = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").resolve().as_uri() if beside else None
    return client.create_experiment(cfg.mlflow.experiment, artifact_location=where)


def recorded_ids(run_dir: Path) -> dict:
    """What ``RUN_DIR/tracking.json`` records (the MLflow run id and store), empty before the first run."""
    ids = Path(run_dir) / "tracking.json"
    return json.loads(ids.read_text()) if ids.is_file() else {}


class MLflow:
    """One MLflow run per run folder (its id in ``RUN_DIR/tracking.json``), reopened on resume."""

    def __init__(self, run_dir: Path, cfg: Config, name: str | None = None) -> None:
        from mlflow import MlflowClient
        from mlflow.entities import Param

        self.client = MlflowClient(tracking_uri=mlflow_uri(cfg))
        ids = run_dir / "tracking.json"
        known = recorded_ids(run_dir)
        params = flat_config(cfg)
        if "mlflow_run_id" in known:
            self.run_id = known["mlflow_run_id"]
            logged = self.client.get_run(self.run_id).data.params
            self.client.update_run(self.run_id, status="RUNNING")
            for k, v in params.items():  # a resume's overrides: params are immutable in MLflow, tags are not
                if k in logged and logged[k] != v[:6000]:
                    self.client.set_tag(self.run_id, f"resumed_with.{k}", v)
            history = self.client.get_metric_history(self.run_id, ROUND)
            self.last = max((int(m.step) for m in history), default=-1)
        else:
            tags = {"mlflow.parentRunId": cfg.mlflow.parent_run} if cfg.mlflow.parent_run else {}
            run = self.client.create_run(mlflow_experiment(self.client, cfg), run_name=name or run_dir.name, tags=tags)
            self.run_id = run.info.run_id
            items = [Param(k, v[:6000]) for k, v in params.items()]
            for i in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=items[i : i + 100])
            ids.write_text(json.dumps({**known, "mlflow_run_id": self.run_id, "mlflow_uri": mlflow_uri(cfg)}) + "\n")
            self.last = -1

    def log(self, step: int, values: dict[str, float], mark: bool = True) -> None:
        """``values`` at ``step``, then (``mark``) the ``round`` metric that says the step is complete."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        metrics = [Metric(k, v, now, step) for k, v in values.items()] + ([Metric(ROUND, step, now, step)] if mark
                                                                          else [])
        for i in range(0, len(metrics), 1000):  # the ROUND metric comes last: a cut batch is redone on resume
            self.client.log_batch(self.run_id, metrics=metrics[i : i + 1000])

    def finish(self, run_dir: Path) -> None:
        """The final adapters, the report and the plots as artifacts; the run marked finished."""
        rounds = sorted(p.parent for p in (run_dir / "rounds").glob("*/DONE"))
        if rounds:
            for part in ("theta", "omega"):
                if (rounds[-1] / part).is_dir():
                    self.client.log_artifacts(self.run_id, str(rounds[-1] / part), f"adapters/{part}")
        for p in [run_dir / "report.md", run_dir / "config.yaml", *sorted(run_dir.glob("*.png"))]:
            if p.is_file():
                self.client.log_artifact(self.run_id, str(p))
        self.client.set_terminated(self.run_id, "FINISHED")


class Trackers:
    """The trackers a config asks for, fed from the run's logged records."""

    def __init__(self, run_dir: Path, cfg: Config, name: str | None = None) -> None:
        makers = {"tensorboard": TensorBoard, "mlflow": MLflow}
        self.run_dir = Path(run_dir)
        self.items = []
        for kind in dict.fromkeys(cfg.tracking):  # each once, in the order given
            self.items.append(makers[kind](self.run_dir, cfg, name))

    def sync(self, records: list[RoundRecord]) -> None:
        """Log every record a tracker does not have yet (round number = step)."""
        for tracker in self.items:
            for record in records:
                step = record.round
                if step > tracker.last:
                    tracker.log(step, scalars(record))
                    tracker.last = step

    def finish(self) -> None:
        for tracker in self.items:
            tracker.finish(self.run_dir)
